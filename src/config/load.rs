//! Text → [`Config`]: YAML or TOML, then full validation. Every error names the field path
//! and, where the text has one, the line.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;

use super::envoy::{Bootstrap, EnvoyCluster};
use super::http::RouteConfig;
use super::istio::{DestinationRule, PeerAuthentication, VirtualService};
use super::model::{Config, Discovery, EndpointAddress, Protocol};

/// Which syntax a config text is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// `.toml` files are TOML; everything else (`.yaml`, `.yml`, no extension) is YAML.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("toml") => Format::Toml,
            _ => Format::Yaml,
        }
    }
}

/// One problem in a config, located as precisely as the text allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Field path such as `listeners[0].cluster`; empty for syntax errors.
    pub path: String,
    /// 1-based line in the source text, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A rejected config: every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                path: path.into(),
                line: None,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Parse and validate a config text.
pub fn parse(text: &str, format: Format) -> Result<Config, ConfigError> {
    let cfg = parse_only(text, format)?;
    validate(&cfg).map_err(|mut e| {
        for p in &mut e.problems {
            p.line = locate(text, format, &p.path);
        }
        e
    })?;
    Ok(cfg)
}

/// Syntax and shape only (no cross-reference checks): what an `apply` patch must pass
/// before it is merged into the running config and validated as a whole.
///
/// A YAML text may hold several documents (`---`), each one of: the native shape
/// (`listeners`/`clusters`/`route_configs`/…), an Istio resource (`apiVersion` + `kind`:
/// `VirtualService`, `DestinationRule`, `PeerAuthentication`), an Envoy route configuration
/// (`name` + `virtual_hosts` or `routes`), an Envoy bootstrap (`static_resources.clusters`),
/// or the seed's Envoy cluster list (`cluster:`).
pub fn parse_only(text: &str, format: Format) -> Result<Config, ConfigError> {
    let mut out = Config::default();
    match format {
        Format::Yaml => {
            for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
                let value =
                    serde_yaml::Value::deserialize(doc).map_err(|e| yaml_error(text, e, None))?;
                let keys: Vec<&str> = match &value {
                    serde_yaml::Value::Null => continue,
                    serde_yaml::Value::Mapping(m) => m.keys().filter_map(|k| k.as_str()).collect(),
                    _ => Vec::new(),
                };
                let kind = DocKind::classify(&keys, value.get("kind").and_then(|k| k.as_str()))
                    .map_err(|m| ConfigError {
                        problems: vec![Problem {
                            path: String::new(),
                            line: doc_line(text, i),
                            message: m,
                        }],
                    })?;
                // Deserialize the same document again into its typed shape, so errors keep
                // their line numbers. (The iterator yields it again; it cannot be missing.)
                let Some(doc) = serde_yaml::Deserializer::from_str(text).nth(i) else {
                    continue;
                };
                kind.read(doc, &mut out)
                    .map_err(|e| yaml_error(text, e, Some(kind)))?;
            }
        }
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, e))?;
            let keys: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
            let kind = DocKind::classify(&keys, table.get("kind").and_then(|k| k.as_str()))
                .map_err(|m| ConfigError::one("", m))?;
            kind.read(toml::Deserializer::new(text), &mut out)
                .map_err(|e| toml_error(text, e))?;
        }
    }
    Ok(out)
}

/// What one document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocKind {
    Native,
    VirtualService,
    DestinationRule,
    PeerAuthentication,
    EnvoyRouteConfig,
    EnvoyBootstrap,
    EnvoyClusterList,
}

impl DocKind {
    fn classify(keys: &[&str], kind: Option<&str>) -> Result<DocKind, String> {
        let has = |k: &str| keys.contains(&k);
        if has("apiVersion") || has("kind") {
            return match kind {
                Some("VirtualService") => Ok(DocKind::VirtualService),
                Some("DestinationRule") => Ok(DocKind::DestinationRule),
                Some("PeerAuthentication") => Ok(DocKind::PeerAuthentication),
                Some(other) => Err(format!(
                    "kind `{other}` is not supported (VirtualService, DestinationRule, PeerAuthentication)"
                )),
                None => Err("a document with `apiVersion` needs a `kind`".into()),
            };
        }
        if has("static_resources") {
            return Ok(DocKind::EnvoyBootstrap);
        }
        if has("cluster") && !has("listeners") && !has("clusters") {
            return Ok(DocKind::EnvoyClusterList);
        }
        if has("name") && (has("virtual_hosts") || has("routes")) {
            return Ok(DocKind::EnvoyRouteConfig);
        }
        Ok(DocKind::Native)
    }

    fn label(self) -> &'static str {
        match self {
            DocKind::Native => "config",
            DocKind::VirtualService => "VirtualService",
            DocKind::DestinationRule => "DestinationRule",
            DocKind::PeerAuthentication => "PeerAuthentication",
            DocKind::EnvoyRouteConfig => "Envoy route configuration",
            DocKind::EnvoyBootstrap => "Envoy bootstrap",
            DocKind::EnvoyClusterList => "Envoy cluster list",
        }
    }

    fn read<'de, D: serde::Deserializer<'de>>(
        self,
        d: D,
        out: &mut Config,
    ) -> Result<(), D::Error> {
        use serde::de::Error;
        use serde::Deserialize;
        let clusters =
            |list: Vec<EnvoyCluster>, at: &str, out: &mut Config| -> Result<(), D::Error> {
                for (i, c) in list.iter().enumerate() {
                    out.clusters.push(c.to_native().map_err(|(field, m)| {
                        D::Error::custom(format!("{at}[{i}].{field}: {m}"))
                    })?);
                }
                Ok(())
            };
        match self {
            DocKind::Native => {
                let c = Config::deserialize(d)?;
                out.listeners.extend(c.listeners);
                out.clusters.extend(c.clusters);
                out.route_configs.extend(c.route_configs);
                out.virtual_services.extend(c.virtual_services);
                out.destination_rules.extend(c.destination_rules);
                out.peer_authentications.extend(c.peer_authentications);
                if c.nic.is_some() {
                    out.nic = c.nic;
                }
                set_node(out, c.node)?;
                // The daemon-wide `offload:` block (was dropped here: every daemon ran
                // `auto` whatever the file said).
                if c.offload.is_some() {
                    out.offload = c.offload;
                }
            }
            DocKind::VirtualService => out.virtual_services.push(VirtualService::deserialize(d)?),
            DocKind::DestinationRule => {
                out.destination_rules.push(DestinationRule::deserialize(d)?)
            }
            DocKind::PeerAuthentication => out
                .peer_authentications
                .push(PeerAuthentication::deserialize(d)?),
            DocKind::EnvoyRouteConfig => out.route_configs.push(RouteConfig::deserialize(d)?),
            DocKind::EnvoyBootstrap => {
                let b = Bootstrap::deserialize(d)?;
                set_node(out, b.node)?;
                clusters(
                    b.static_resources.clusters,
                    "static_resources.clusters",
                    out,
                )?
            }
            DocKind::EnvoyClusterList => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct List {
                    cluster: Vec<EnvoyCluster>,
                }
                clusters(List::deserialize(d)?.cluster, "cluster", out)?
            }
        }
        Ok(())
    }
}

/// Take a document's `node` (native, or an Envoy bootstrap's): one locality per config.
fn set_node<E: serde::de::Error>(
    out: &mut Config,
    node: Option<super::model::Node>,
) -> Result<(), E> {
    match (&out.node, node) {
        (_, None) => Ok(()),
        (Some(a), Some(b)) if a.locality != b.locality => Err(E::custom(format!(
            "node.locality: `{}` here, `{}` in an earlier document: give the proxy one locality",
            b.locality, a.locality
        ))),
        (_, b) => {
            out.node = b;
            Ok(())
        }
    }
}

/// The line a YAML document starts on (its first non-comment content).
fn doc_line(text: &str, index: usize) -> Option<usize> {
    let mut doc = 0;
    let mut seen_content = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            if seen_content || n > 0 {
                doc += 1;
            }
            seen_content = false;
            continue;
        }
        let t = line.trim();
        if doc == index && !t.is_empty() && !t.starts_with('#') {
            return Some(n + 1);
        }
        if !t.is_empty() && !t.starts_with('#') {
            seen_content = true;
        }
    }
    None
}

fn yaml_error(_text: &str, e: serde_yaml::Error, kind: Option<DocKind>) -> ConfigError {
    let line = e.location().map(|l| l.line());
    // serde_yaml's message already carries the field path ("listeners[0]: …").
    let message = e.to_string();
    let mut message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    if let Some(k) = kind.filter(|k| *k != DocKind::Native) {
        message = format!("{}: {message}", k.label());
    }
    ConfigError {
        problems: vec![Problem {
            path: String::new(),
            line,
            message,
        }],
    }
}

fn toml_error(text: &str, e: toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start));
    ConfigError {
        problems: vec![Problem {
            path: String::new(),
            line,
            message: e.message().trim().to_string(),
        }],
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

const NAME_RULE: &str = "names are 1-63 characters of [A-Za-z0-9._-]";

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whole-config checks: names, uniqueness, cross-references, value ranges.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |path: String, message: String| {
        problems.push(Problem {
            path,
            line: None,
            message,
        })
    };

    if let Some(n) = &cfg.node {
        let parts: Vec<&str> = n.locality.split('/').collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty() || p.contains('*')) {
            bad(
                "node.locality".into(),
                format!(
                    "`{}` is not a locality: region, region/zone or region/zone/sub_zone",
                    n.locality
                ),
            );
        }
    }
    let mut cluster_names = HashSet::new();
    for (i, c) in cfg.clusters.iter().enumerate() {
        let at = format!("clusters[{i}]");
        if !valid_name(&c.name) {
            bad(
                format!("{at}.name"),
                format!("invalid name `{}`: {NAME_RULE}", c.name),
            );
        }
        if !cluster_names.insert(c.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("duplicate cluster name `{}`", c.name),
            );
        }
        if c.endpoints.is_empty() {
            bad(
                format!("{at}.endpoints"),
                "a cluster needs at least one endpoint".into(),
            );
        }
        let mut seen = HashSet::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            if !(1..=10_000).contains(&e.weight) {
                bad(
                    format!("{at}.endpoints[{j}].weight"),
                    format!("weight {} is out of range 1..=10000", e.weight),
                );
            }
            if !seen.insert(e.address.clone()) {
                bad(
                    format!("{at}.endpoints[{j}]"),
                    format!("endpoint {} is listed twice", e.address),
                );
            }
            match &e.address {
                EndpointAddress::Ip(a) if a.port() == 0 || a.ip().is_unspecified() => {
                    bad(format!("{at}.endpoints[{j}]"), format!("endpoint {a} is not a connectable address"))
                }
                EndpointAddress::Dns { port: 0, .. } => {
                    bad(format!("{at}.endpoints[{j}]"), format!("endpoint {} has port 0", e.address))
                }
                EndpointAddress::Dns { host, .. } if c.discovery == Discovery::Static => bad(
                    format!("{at}.endpoints[{j}]"),
                    format!("`{host}` is a name, not an address: give the cluster `type: strict_dns` to resolve it"),
                ),
                _ => {}
            }
        }
        if let Some(o) = &c.outlier_detection {
            if let Some(p) = o.max_ejection_percent.filter(|p| *p > 100) {
                bad(
                    format!("{at}.outlier_detection.max_ejection_percent"),
                    format!("{p} is over 100"),
                );
            }
            for (name, p) in [
                ("enforcing_consecutive_5xx", o.enforcing_consecutive_5xx),
                (
                    "enforcing_consecutive_gateway_failure",
                    o.enforcing_consecutive_gateway_failure,
                ),
                ("enforcing_success_rate", o.enforcing_success_rate),
                (
                    "enforcing_failure_percentage",
                    o.enforcing_failure_percentage,
                ),
                (
                    "failure_percentage_threshold",
                    o.failure_percentage_threshold,
                ),
                (
                    "enforcing_consecutive_local_origin_failure",
                    o.enforcing_consecutive_local_origin_failure,
                ),
                (
                    "enforcing_local_origin_success_rate",
                    o.enforcing_local_origin_success_rate,
                ),
                (
                    "enforcing_failure_percentage_local_origin",
                    o.enforcing_failure_percentage_local_origin,
                ),
            ] {
                if let Some(p) = p.filter(|p| *p > 100) {
                    bad(
                        format!("{at}.outlier_detection.{name}"),
                        format!("{p} is over 100 (a percentage)"),
                    );
                }
            }
            if o.split_external_local_origin_errors != Some(true) {
                for (name, set) in [
                    (
                        "consecutive_local_origin_failure",
                        o.consecutive_local_origin_failure.is_some(),
                    ),
                    (
                        "enforcing_consecutive_local_origin_failure",
                        o.enforcing_consecutive_local_origin_failure.is_some(),
                    ),
                    (
                        "enforcing_local_origin_success_rate",
                        o.enforcing_local_origin_success_rate.is_some(),
                    ),
                    (
                        "enforcing_failure_percentage_local_origin",
                        o.enforcing_failure_percentage_local_origin.is_some(),
                    ),
                ] {
                    if set {
                        bad(
                            format!("{at}.outlier_detection.{name}"),
                            "takes effect only with `split_external_local_origin_errors: true`; set that too, or remove this field".into(),
                        );
                    }
                }
            }
            for (name, d) in [
                ("interval", o.interval),
                ("base_ejection_time", o.base_ejection_time),
                ("max_ejection_time", o.max_ejection_time),
            ] {
                if d.is_some_and(|d| d.is_zero()) {
                    bad(
                        format!("{at}.outlier_detection.{name}"),
                        "must be longer than zero".into(),
                    );
                }
            }
        }
        if let Some(h) = &c.hash_policy {
            let keys = [
                h.header.is_some(),
                h.cookie.is_some(),
                h.source_ip == Some(true),
                h.query_parameter.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 || h.source_ip == Some(false) {
                bad(
                    format!("{at}.hash_policy"),
                    "give exactly one key: header, cookie, query_parameter or source_ip: true"
                        .into(),
                );
            }
            if let Some(name) = h.header.as_ref().or(h.cookie.as_ref()) {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';')
                {
                    bad(
                        format!("{at}.hash_policy"),
                        format!("`{name}` is not a header or cookie name"),
                    );
                }
            }
            if !matches!(
                c.lb_policy,
                super::model::LbPolicy::Maglev | super::model::LbPolicy::RingHash
            ) {
                bad(
                    format!("{at}.hash_policy"),
                    "hashing needs lb_policy maglev or ring_hash".into(),
                );
            }
            if (h.cookie_ttl.is_some() || h.cookie_path.is_some()) && h.cookie.is_none() {
                bad(
                    format!("{at}.hash_policy"),
                    "cookie_ttl/cookie_path describe a generated cookie: they need `cookie`".into(),
                );
            }
            if h.cookie_path.is_some() && h.cookie_ttl.is_none() {
                bad(
                    format!("{at}.hash_policy.cookie_path"),
                    "only a generated cookie has a path: set cookie_ttl too".into(),
                );
            }
            if let Some(p) = h
                .cookie_path
                .as_deref()
                .filter(|p| !super::traffic_policy::cookie_path_ok(p))
            {
                bad(
                    format!("{at}.hash_policy.cookie_path"),
                    format!(
                        "`{p}` is not a cookie path (starts with `/`, no `;`, no control bytes)"
                    ),
                );
            }
        }
        if let Some(t) = c.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&t) {
                bad(
                    format!("{at}.healthy_panic_threshold"),
                    format!("{t} is not a percentage 0..=100 (0 disables panic mode)"),
                );
            }
        }
        if !c.locality_weights.is_empty() {
            for name in c.locality_weights.keys() {
                if !c
                    .endpoints
                    .iter()
                    .any(|e| e.locality.as_deref().unwrap_or("") == name)
                {
                    bad(
                        format!("{at}.locality_weights.{name}"),
                        format!("no endpoint of cluster `{}` has locality `{name}`", c.name),
                    );
                }
            }
            if let Some((name, w)) = c.locality_weights.iter().find(|(_, &w)| w > 65_535) {
                bad(
                    format!("{at}.locality_weights.{name}"),
                    format!("weight {w} is over 65535"),
                );
            }
            if c.locality_weights.values().all(|&w| w == 0) {
                bad(
                    format!("{at}.locality_weights"),
                    "every weight is 0: no locality would take traffic".into(),
                );
            }
        }
        check_lb_config(c, &at, &mut bad);
        if c.health_checks.len() > 1 {
            bad(
                format!("{at}.health_checks"),
                "one health check per cluster is supported".into(),
            );
        }
        for (j, h) in c.health_checks.iter().enumerate() {
            check_health_check(h, &format!("{at}.health_checks[{j}]"), &mut bad);
        }
        if c.endpoints.len() > u16::MAX as usize {
            bad(
                format!("{at}.endpoints"),
                format!("at most {} endpoints per cluster", u16::MAX),
            );
        }
        if let Some(p) = c
            .circuit_breakers
            .as_ref()
            .and_then(|b| b.retry_budget.as_ref())
            .and_then(|r| r.budget_percent)
        {
            if !(0.0..=100.0).contains(&p.value) {
                bad(
                    format!("{at}.circuit_breakers.retry_budget.budget_percent.value"),
                    format!("{} is not a percentage 0..=100", p.value),
                );
            }
        }
        if c.idle_timeout.is_some_and(|t| t.is_zero()) {
            bad(
                format!("{at}.idle_timeout"),
                "must be longer than 0 (idle pooled connections are closed after it)".into(),
            );
        }
        if let Some(t) = c.connect_timeout {
            if t.is_zero() || t.as_secs() > 3600 {
                bad(
                    format!("{at}.connect_timeout"),
                    "must be between 1ms and 1h".into(),
                );
            }
        }
        if let Some(n) = c.max_connect_attempts {
            if !(1..=16).contains(&n) {
                bad(
                    format!("{at}.max_connect_attempts"),
                    format!("{n} is out of range 1..=16"),
                );
            }
        }
    }

    let mut listener_names = HashSet::new();
    let mut addresses: HashMap<(Protocol, std::net::SocketAddr), &str> = HashMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        if !valid_name(&l.name) {
            bad(
                format!("{at}.name"),
                format!("invalid name `{}`: {NAME_RULE}", l.name),
            );
        }
        if !listener_names.insert(l.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        if let Some(other) = addresses.insert((l.protocol, l.address), &l.name) {
            bad(
                format!("{at}.address"),
                format!(
                    "{} {} is already used by listener `{other}`",
                    l.protocol, l.address
                ),
            );
        }
        match (&l.cluster, l.weighted_clusters.is_empty()) {
            (Some(_), false) => bad(
                at.clone(),
                "set either `cluster` or `weighted_clusters`, not both".into(),
            ),
            (None, true) if l.protocol != Protocol::Http => bad(
                at.clone(),
                "a listener needs `cluster` or `weighted_clusters`".into(),
            ),
            _ => {}
        }
        match (&l.route_config, l.protocol) {
            (Some(_), Protocol::Tcp | Protocol::Udp) => bad(
                format!("{at}.route_config"),
                format!("`route_config` needs `protocol: http`, not {}", l.protocol),
            ),
            (Some(r), Protocol::Http) if !cfg.route_configs.iter().any(|c| &c.name == r) => bad(
                format!("{at}.route_config"),
                format!("route configuration `{r}` is not defined"),
            ),
            _ => {}
        }
        if let Some(c) = &l.cluster {
            if !cluster_names.contains(c.as_str()) {
                bad(
                    format!("{at}.cluster"),
                    format!("cluster `{c}` is not defined"),
                );
            }
        }
        let mut total: u64 = 0;
        for (j, w) in l.weighted_clusters.iter().enumerate() {
            if !cluster_names.contains(w.cluster.as_str()) {
                bad(
                    format!("{at}.weighted_clusters[{j}].cluster"),
                    format!("cluster `{}` is not defined", w.cluster),
                );
            }
            total += u64::from(w.weight);
        }
        if !l.weighted_clusters.is_empty() && (total == 0 || total > 1_000_000) {
            bad(
                format!("{at}.weighted_clusters"),
                format!("weights sum to {total}; the sum must be 1..=1000000"),
            );
        }
        if l.max_connections == Some(0) {
            bad(format!("{at}.max_connections"), "must be at least 1".into());
        }
        if l.idle_timeout.is_some_and(|t| t.is_zero()) {
            bad(format!("{at}.idle_timeout"), "must be longer than 0".into());
        }
    }

    if let Some(n) = &cfg.nic {
        if n.profile.trim().is_empty() {
            bad(
                "nic.profile".into(),
                "name a profile file or `low-latency`".into(),
            );
        }
        if n.drift_check
            .is_some_and(|d| d < std::time::Duration::from_secs(1))
        {
            bad(
                "nic.drift_check".into(),
                "check at most once a second".into(),
            );
        }
    }

    super::check_l7::check(cfg, &mut bad);

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// The 1-based line where `path` (`listeners[0].cluster`) is written in `text`.
pub fn locate(text: &str, format: Format, path: &str) -> Option<usize> {
    match format {
        Format::Yaml => locate_yaml(text, path),
        Format::Toml => locate_toml(text, path),
    }
}

fn locate_yaml(text: &str, want: &str) -> Option<usize> {
    use yaml_rust2::parser::{Event, Parser};
    enum Frame {
        Map { key: Option<String> },
        Seq { index: usize },
    }
    fn path_of(stack: &[(Frame, String)]) -> String {
        stack.last().map(|(_, p)| p.clone()).unwrap_or_default()
    }
    // Each frame remembers the path of the container it is.
    let mut stack: Vec<(Frame, String)> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    // The path of the value about to start, given the innermost container.
    let child_path = |stack: &mut Vec<(Frame, String)>| -> Option<String> {
        let (frame, base) = stack.last_mut()?;
        let join = |k: &str| {
            if base.is_empty() {
                k.to_string()
            } else {
                format!("{base}.{k}")
            }
        };
        match frame {
            Frame::Map { key } => key.take().map(|k| join(&k)),
            Frame::Seq { index } => {
                let p = format!("{base}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    };
    loop {
        let (ev, mark) = parser.next_token().ok()?;
        let line = mark.line();
        match ev {
            Event::StreamEnd => return None,
            Event::Scalar(value, ..) => {
                let is_key = matches!(stack.last(), Some((Frame::Map { key: None }, _)));
                if is_key {
                    let base = path_of(&stack);
                    let p = if base.is_empty() {
                        value.clone()
                    } else {
                        format!("{base}.{value}")
                    };
                    if p == want {
                        return Some(line);
                    }
                    if let Some((Frame::Map { key }, _)) = stack.last_mut() {
                        *key = Some(value);
                    }
                } else if child_path(&mut stack).as_deref() == Some(want) {
                    return Some(line);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let p = if stack.is_empty() {
                    String::new()
                } else {
                    child_path(&mut stack).unwrap_or_default()
                };
                if !p.is_empty() && p == want {
                    return Some(line);
                }
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { index: 0 }
                };
                stack.push((frame, p));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
}

fn locate_toml(text: &str, want: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for part in want.split('.') {
        let (key, index) = match part.find('[') {
            Some(b) => (
                &part[..b],
                part[b + 1..part.len() - 1].parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        item = item.get(key)?;
        span = item.span().or(span);
        if let Some(i) = index {
            item = match item {
                toml_edit::Item::ArrayOfTables(a) => {
                    let t = a.get(i)?;
                    span = t.span().or(span);
                    // Walk on through the table as an item.
                    return locate_in_table(t, want, part, span, text);
                }
                other => other.get(i)?,
            };
            span = item.span().or(span);
        }
    }
    span.map(|s| line_of(text, s.start))
}

fn locate_in_table(
    t: &toml_edit::Table,
    want: &str,
    upto: &str,
    mut span: Option<std::ops::Range<usize>>,
    text: &str,
) -> Option<usize> {
    let rest = want
        .split_once(upto)
        .map(|(_, r)| r.trim_start_matches('.'))
        .unwrap_or("");
    let mut item: Option<&toml_edit::Item> = None;
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (key, index) = match part.find('[') {
            Some(b) => (
                &part[..b],
                part[b + 1..part.len() - 1].parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        let next = match item {
            None => t.get(key)?,
            Some(i) => i.get(key)?,
        };
        span = next.span().or(span);
        item = Some(match index {
            Some(i) => {
                let v = next.get(i)?;
                span = v.span().or(span);
                v
            }
            None => next,
        });
    }
    span.map(|s| line_of(text, s.start))
}

/// A cluster's policy-specific balancer settings: each belongs to its own `lb_policy`
/// (set on another it would be silently ignored) and stays within Envoy's ranges.
fn check_lb_config(c: &super::model::Cluster, at: &str, bad: &mut impl FnMut(String, String)) {
    use super::model::LbPolicy;
    use crate::cluster::{maglev, ring};
    let mut belongs = |field: &str, policy: LbPolicy, name: &str| {
        if c.lb_policy != policy {
            bad(
                format!("{at}.{field}"),
                format!("applies to lb_policy {name} only; this cluster's is not {name}"),
            );
        }
    };
    if c.ring_hash_lb_config.is_some() {
        belongs("ring_hash_lb_config", LbPolicy::RingHash, "ring_hash");
    }
    if c.maglev_lb_config.is_some() {
        belongs("maglev_lb_config", LbPolicy::Maglev, "maglev");
    }
    if c.least_request_lb_config.is_some() {
        belongs(
            "least_request_lb_config",
            LbPolicy::LeastRequest,
            "least_request",
        );
    }
    if c.round_robin_lb_config.is_some() {
        belongs("round_robin_lb_config", LbPolicy::RoundRobin, "round_robin");
    }
    if let Some(r) = &c.ring_hash_lb_config {
        let at = format!("{at}.ring_hash_lb_config");
        for (name, v) in [
            ("minimum_ring_size", r.minimum_ring_size),
            ("maximum_ring_size", r.maximum_ring_size),
        ] {
            match v {
                Some(0) => bad(
                    format!("{at}.{name}"),
                    format!(
                        "0 leaves no room on the ring: give 1..={}",
                        ring::MAX_RING_SIZE
                    ),
                ),
                Some(n) if n > ring::MAX_RING_SIZE => bad(
                    format!("{at}.{name}"),
                    format!("{n} is over {} (Envoy's limit)", ring::MAX_RING_SIZE),
                ),
                _ => {}
            }
        }
        let min = r.minimum_ring_size.unwrap_or(ring::DEFAULT_MIN_RING_SIZE);
        let max = r.maximum_ring_size.unwrap_or(ring::MAX_RING_SIZE);
        if min > max {
            bad(
                format!("{at}.minimum_ring_size"),
                format!("minimum_ring_size {min} is larger than maximum_ring_size {max}"),
            );
        }
    }
    if let Some(n) = c.maglev_lb_config.as_ref().and_then(|m| m.table_size) {
        let at = format!("{at}.maglev_lb_config.table_size");
        if n > maglev::MAX_TABLE_SIZE {
            bad(
                at,
                format!("{n} is over {} (Envoy's limit)", maglev::MAX_TABLE_SIZE),
            );
        } else if !maglev::is_prime(n) {
            bad(
                at,
                format!("{n} is not a prime: Maglev needs a prime table size (e.g. 65537, 131071, 655373)"),
            );
        } else if n <= c.endpoints.len() as u64 {
            bad(
                at,
                format!(
                    "{n} slots cannot hold {} endpoints: give a prime well above 100 × the endpoints",
                    c.endpoints.len()
                ),
            );
        }
    }
    if c.consistent_hashing_lb_config.is_some()
        && !matches!(c.lb_policy, LbPolicy::RingHash | LbPolicy::Maglev)
    {
        bad(
            format!("{at}.consistent_hashing_lb_config"),
            "applies to lb_policy ring_hash or maglev only; this cluster's is neither".into(),
        );
    }
    if let Some(ch) = &c.consistent_hashing_lb_config {
        let at = format!("{at}.consistent_hashing_lb_config");
        if let Some(f) = ch.hash_balance_factor.filter(|&f| f < 100) {
            bad(
                format!("{at}.hash_balance_factor"),
                format!("{f} is below 100: it is a percentage of the average load (≥ 100; typically 120..200)"),
            );
        }
        if ch.use_hostname_for_hashing == Some(true) {
            let mut names = HashSet::new();
            for (j, e) in c.endpoints.iter().enumerate() {
                match crate::cluster::hash_name(e) {
                    None => bad(
                        format!("{at}.use_hostname_for_hashing"),
                        format!("endpoint {j} ({}) has no host name: give it `hostname`, or make the cluster strict_dns with a name", e.address),
                    ),
                    Some(n) if !names.insert(n.clone()) => bad(
                        format!("{at}.use_hostname_for_hashing"),
                        format!("host name `{n}` names two endpoints: they would share every key"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    let slow = [
        (
            "round_robin_lb_config",
            c.round_robin_lb_config
                .as_ref()
                .and_then(|r| r.slow_start_config.as_ref()),
        ),
        (
            "least_request_lb_config",
            c.least_request_lb_config
                .as_ref()
                .and_then(|r| r.slow_start_config.as_ref()),
        ),
    ];
    for (field, s) in slow {
        if let Some(s) = s {
            check_slow_start(s, &format!("{at}.{field}.slow_start_config"), &mut *bad);
        }
    }
    if let Some(l) = &c.least_request_lb_config {
        let at = format!("{at}.least_request_lb_config");
        if let Some(n) = l.choice_count.filter(|&n| n < 2) {
            bad(
                format!("{at}.choice_count"),
                format!("{n}: must be at least 2 (Envoy's rule; one choice is lb_policy random)"),
            );
        }
        if let Some(b) = &l.active_request_bias {
            if !(b.default_value.is_finite() && b.default_value >= 0.0) {
                bad(
                    format!("{at}.active_request_bias.default_value"),
                    format!("{} is not a finite number ≥ 0", b.default_value),
                );
            }
        }
    }
}

/// Envoy's `SlowStartConfig`: a window, an aggression > 0, a percentage.
fn check_slow_start(
    s: &super::model::SlowStartConfig,
    at: &str,
    bad: &mut impl FnMut(String, String),
) {
    match s.slow_start_window {
        None => bad(
            format!("{at}.slow_start_window"),
            "is required: without a window there is no slow start (e.g. \"30s\")".into(),
        ),
        Some(w) if w.is_zero() || w.as_secs() > 24 * 3600 => bad(
            format!("{at}.slow_start_window"),
            "must be between 1ms and 24h".into(),
        ),
        Some(_) => {}
    }
    if let Some(a) = &s.aggression {
        if !(a.default_value.is_finite() && a.default_value > 0.0) {
            bad(
                format!("{at}.aggression.default_value"),
                format!(
                    "{} is not a finite number > 0 (1.0 ramps linearly)",
                    a.default_value
                ),
            );
        }
    }
    if let Some(p) = &s.min_weight_percent {
        if !(0.0..=100.0).contains(&p.value) {
            bad(
                format!("{at}.min_weight_percent.value"),
                format!("{} is not a percentage 0..=100", p.value),
            );
        }
    }
}

/// An active health check: Envoy requires every one of these fields.
fn check_health_check(
    h: &super::model::HealthCheck,
    at: &str,
    bad: &mut impl FnMut(String, String),
) {
    for (name, d) in [("timeout", h.timeout), ("interval", h.interval)] {
        match d {
            None => bad(format!("{at}.{name}"), "is required (e.g. \"1s\")".into()),
            Some(d) if d.is_zero() || d.as_secs() > 3600 => {
                bad(format!("{at}.{name}"), "must be between 1ms and 1h".into())
            }
            Some(_) => {}
        }
    }
    for (name, v) in [
        ("unhealthy_threshold", h.unhealthy_threshold),
        ("healthy_threshold", h.healthy_threshold),
    ] {
        if !(1..=1000).contains(&v) {
            bad(
                format!("{at}.{name}"),
                format!("{v} is out of range 1..=1000"),
            );
        }
    }
    let http = match (&h.http_health_check, &h.tcp_health_check) {
        (Some(http), None) => http,
        (None, Some(_)) => return,
        _ => {
            bad(
                at.to_string(),
                "give exactly one of http_health_check, tcp_health_check".into(),
            );
            return;
        }
    };
    let p = &http.path;
    if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        bad(
            format!("{at}.http_health_check.path"),
            format!("`{p}` is not an absolute request path (it must start with `/`, without spaces or control characters)"),
        );
    }
    if let Some(host) = &http.host {
        if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            bad(
                format!("{at}.http_health_check.host"),
                format!("`{host}` is not a valid Host header value"),
            );
        }
    }
    for (k, r) in http.expected_statuses.iter().enumerate() {
        if !(100..=600).contains(&r.start) || !(100..=600).contains(&r.end) || r.start >= r.end {
            bad(
                format!("{at}.http_health_check.expected_statuses[{k}]"),
                format!(
                    "[{}, {}) is not a status range: start < end, both in 100..=600",
                    r.start, r.end
                ),
            );
        }
    }
}
