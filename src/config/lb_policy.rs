//! Envoy's typed-extension balancer choice (`Cluster.load_balancing_policy`, Envoy ≥
//! 1.24) read into the native `lb_policy` and `*_lb_config` fields.
//!
//! Envoy walks `policies` in order and takes the first whose extension it has; so does
//! this: an entry of a type tickmesh does not have is skipped, and only when no entry
//! is usable is the list an error, naming the types it held. The entry taken is read in
//! full: a field of it that tickmesh does not support is an error naming the field,
//! never ignored. As in Envoy, `load_balancing_policy` replaces `lb_policy` and the
//! legacy `*_lb_config` fields; those are then ignored with a warning naming them.
//! Plain config in, plain config out: nothing here is seen by the data plane.

use serde::{Deserialize, Serialize};

use super::model::{
    ConsistentHashingLbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashFunction,
    RingHashLbConfig, RoundRobinLbConfig, RuntimeDouble, SlowStartConfig,
};

/// Envoy's `LoadBalancingPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancingPolicy {
    #[serde(default)]
    pub policies: Vec<PolicyEntry>,
}

/// Envoy's `LoadBalancingPolicy.Policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    pub typed_extension_config: TypedExtensionConfig,
}

/// Envoy's `TypedExtensionConfig`: the `typed_config`'s `@type` selects the extension
/// (its `name` only when there is no `typed_config`), as Envoy's factory lookup does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedExtensionConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<serde_yaml::Value>,
}

/// The balancer a cluster gets: the native fields it sets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LbChoice {
    pub policy: LbPolicy,
    pub ring_hash: Option<RingHashLbConfig>,
    pub maglev: Option<MaglevLbConfig>,
    pub least_request: Option<LeastRequestLbConfig>,
    pub round_robin: Option<RoundRobinLbConfig>,
    pub consistent_hashing: Option<ConsistentHashingLbConfig>,
    /// The policy turns on locality-weighted balancing.
    pub locality_weighted: bool,
}

const TYPE_PREFIX: &str = "type.googleapis.com/";
const PKG: &str = "envoy.extensions.load_balancing_policies";

/// The policies tickmesh has: (package part, message, extension name).
const KNOWN: [(&str, &str, LbPolicy); 5] = [
    ("round_robin", "RoundRobin", LbPolicy::RoundRobin),
    ("least_request", "LeastRequest", LbPolicy::LeastRequest),
    ("random", "Random", LbPolicy::Random),
    ("ring_hash", "RingHash", LbPolicy::RingHash),
    ("maglev", "Maglev", LbPolicy::Maglev),
];

/// The policy a type URL (`type.googleapis.com/envoy.extensions...v3.RoundRobin`) or,
/// without a typed config, an extension name (`envoy.load_balancing_policies.round_robin`)
/// stands for.
fn known(type_url: Option<&str>, name: &str) -> Option<LbPolicy> {
    KNOWN.iter().find_map(|&(pkg, msg, policy)| {
        let hit = match type_url {
            Some(t) => t.strip_prefix(TYPE_PREFIX).unwrap_or(t) == format!("{PKG}.{pkg}.v3.{msg}"),
            None => name == format!("envoy.load_balancing_policies.{pkg}"),
        };
        hit.then_some(policy)
    })
}

/// `common.v3.LocalityLbConfig`: only the locality-weighted choice (zone-aware routing
/// is refused by name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalityLbConfig {
    #[serde(default)]
    locality_weighted_lb_config: Option<super::envoy::LocalityWeightedLbConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoundRobin {
    #[serde(rename = "@type")]
    _type: String,
    #[serde(default)]
    slow_start_config: Option<SlowStartConfig>,
    #[serde(default)]
    locality_lb_config: Option<LocalityLbConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeastRequest {
    #[serde(rename = "@type")]
    _type: String,
    #[serde(default)]
    choice_count: Option<u32>,
    #[serde(default)]
    active_request_bias: Option<RuntimeDouble>,
    #[serde(default)]
    slow_start_config: Option<SlowStartConfig>,
    #[serde(default)]
    locality_lb_config: Option<LocalityLbConfig>,
    /// `N_CHOICES` (the default); `FULL_SCAN` is refused.
    #[serde(default)]
    selection_method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Random {
    #[serde(rename = "@type")]
    _type: String,
    #[serde(default)]
    locality_lb_config: Option<LocalityLbConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingHash {
    #[serde(rename = "@type")]
    _type: String,
    /// `DEFAULT_HASH` or `XX_HASH` (xxHash), `MURMUR_HASH_2`.
    #[serde(default)]
    hash_function: Option<String>,
    #[serde(default)]
    minimum_ring_size: Option<u64>,
    #[serde(default)]
    maximum_ring_size: Option<u64>,
    /// Deprecated spellings of `consistent_hashing_lb_config`'s fields.
    #[serde(default)]
    use_hostname_for_hashing: Option<bool>,
    #[serde(default)]
    hash_balance_factor: Option<u32>,
    #[serde(default)]
    consistent_hashing_lb_config: Option<ConsistentHashingLbConfig>,
    #[serde(default)]
    locality_weighted_lb_config: Option<super::envoy::LocalityWeightedLbConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Maglev {
    #[serde(rename = "@type")]
    _type: String,
    #[serde(default)]
    table_size: Option<u64>,
    #[serde(default)]
    consistent_hashing_lb_config: Option<ConsistentHashingLbConfig>,
    #[serde(default)]
    locality_weighted_lb_config: Option<super::envoy::LocalityWeightedLbConfig>,
}

type Bad = (String, String);

impl LoadBalancingPolicy {
    /// The first usable policy of the list as native fields, or the field that cannot be
    /// taken. `legacy` names the cluster's legacy balancer fields (warned about: this
    /// policy replaces them).
    pub fn choice(&self, cluster: &str, legacy: &[&str]) -> Result<LbChoice, Bad> {
        let at = "load_balancing_policy.policies";
        if self.policies.is_empty() {
            return Err((
                at.into(),
                "is empty: give at least one policy (e.g. envoy.load_balancing_policies.round_robin)"
                    .into(),
            ));
        }
        let mut skipped = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            let t = &p.typed_extension_config;
            let at = format!("{at}[{i}].typed_extension_config");
            let type_url = match &t.typed_config {
                Some(v) => Some(v.get("@type").and_then(|u| u.as_str()).ok_or_else(|| {
                    (
                        format!("{at}.typed_config.@type"),
                        "is missing: give the policy's type URL".to_string(),
                    )
                })?),
                None => None,
            };
            let Some(policy) = known(type_url, &t.name) else {
                skipped.push(type_url.map_or_else(|| t.name.clone(), str::to_string));
                continue;
            };
            if !legacy.is_empty() {
                tracing::warn!(
                    "cluster `{cluster}`: load_balancing_policy replaces {} (as in Envoy); those are ignored",
                    legacy.join(", ")
                );
            }
            if !skipped.is_empty() {
                tracing::info!(
                    "cluster `{cluster}`: load_balancing_policy entries {} are not supported; taking `{}`",
                    skipped.join(", "),
                    policy_name(policy)
                );
            }
            let cfg = t.typed_config.clone().unwrap_or_else(|| {
                let mut m = serde_yaml::Mapping::new();
                m.insert(
                    "@type".into(),
                    format!("{TYPE_PREFIX}{PKG}.{}", policy_name(policy)).into(),
                );
                serde_yaml::Value::Mapping(m)
            });
            return read(policy, cfg, &format!("{at}.typed_config"));
        }
        Err((
            at.into(),
            format!(
                "no policy of the list is supported ({}); tickmesh has {}",
                skipped
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                KNOWN
                    .iter()
                    .map(|(pkg, msg, _)| format!("{PKG}.{pkg}.v3.{msg}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// `round_robin.v3.RoundRobin` and so on.
fn policy_name(p: LbPolicy) -> String {
    KNOWN
        .iter()
        .find(|k| k.2 == p)
        .map_or_else(String::new, |(pkg, msg, _)| format!("{pkg}.v3.{msg}"))
}

/// `v` as `T`; an error names the field of `v` it is in (a typed config arrives as a
/// YAML value, whose errors carry no path): each field is tried alone with `@type`.
fn parse<T: serde::de::DeserializeOwned>(v: serde_yaml::Value, at: &str) -> Result<T, Bad> {
    serde_yaml::from_value::<T>(v.clone()).map_err(|e| {
        let field = v.as_mapping().and_then(|m| {
            m.iter().find_map(|(k, x)| {
                let k = k.as_str().filter(|k| *k != "@type")?;
                let mut alone = serde_yaml::Mapping::new();
                alone.insert("@type".into(), v.get("@type")?.clone());
                alone.insert(k.into(), x.clone());
                let e = serde_yaml::from_value::<T>(serde_yaml::Value::Mapping(alone)).err()?;
                (!e.to_string().starts_with("unknown field")).then(|| k.to_string())
            })
        });
        match field {
            Some(f) => (format!("{at}.{f}"), e.to_string()),
            None => (at.to_string(), e.to_string()),
        }
    })
}

fn locality(l: Option<LocalityLbConfig>, at: &str) -> Result<bool, Bad> {
    match l {
        None => Ok(false),
        Some(LocalityLbConfig {
            locality_weighted_lb_config: Some(_),
        }) => Ok(true),
        Some(_) => Err((
            format!("{at}.locality_lb_config"),
            "give locality_weighted_lb_config: {} (zone-aware routing is not supported)".into(),
        )),
    }
}

/// Read the typed config of `policy` into native fields.
fn read(policy: LbPolicy, v: serde_yaml::Value, at: &str) -> Result<LbChoice, Bad> {
    let mut out = LbChoice {
        policy,
        ..LbChoice::default()
    };
    match policy {
        LbPolicy::RoundRobin => {
            let c: RoundRobin = parse(v, at)?;
            out.locality_weighted = locality(c.locality_lb_config, at)?;
            out.round_robin = c.slow_start_config.map(|s| RoundRobinLbConfig {
                slow_start_config: Some(s),
            });
        }
        LbPolicy::LeastRequest => {
            let c: LeastRequest = parse(v, at)?;
            out.locality_weighted = locality(c.locality_lb_config, at)?;
            match c.selection_method.as_deref() {
                None | Some("N_CHOICES") => {}
                Some(other) => {
                    return Err((
                        format!("{at}.selection_method"),
                        format!("`{other}` is not supported (N_CHOICES)"),
                    ))
                }
            }
            out.least_request = Some(LeastRequestLbConfig {
                choice_count: c.choice_count,
                active_request_bias: c.active_request_bias,
                slow_start_config: c.slow_start_config,
            })
            .filter(|l| *l != LeastRequestLbConfig::default());
        }
        LbPolicy::Random => {
            let c: Random = parse(v, at)?;
            out.locality_weighted = locality(c.locality_lb_config, at)?;
        }
        LbPolicy::RingHash => {
            let c: RingHash = parse(v, at)?;
            out.locality_weighted = c.locality_weighted_lb_config.is_some();
            let hash_function = match c.hash_function.as_deref() {
                None | Some("DEFAULT_HASH") => None,
                Some("XX_HASH") => Some(RingHashFunction::XxHash),
                Some("MURMUR_HASH_2") => Some(RingHashFunction::MurmurHash2),
                Some(other) => {
                    return Err((
                        format!("{at}.hash_function"),
                        format!(
                        "`{other}` is not a hash function (DEFAULT_HASH, XX_HASH, MURMUR_HASH_2)"
                    ),
                    ))
                }
            };
            out.ring_hash = Some(RingHashLbConfig {
                minimum_ring_size: c.minimum_ring_size,
                maximum_ring_size: c.maximum_ring_size,
                hash_function,
            })
            .filter(|r| *r != RingHashLbConfig::default());
            let deprecated = (c.use_hostname_for_hashing.is_some()
                || c.hash_balance_factor.is_some())
            .then_some(ConsistentHashingLbConfig {
                use_hostname_for_hashing: c.use_hostname_for_hashing,
                hash_balance_factor: c.hash_balance_factor,
            });
            out.consistent_hashing = match (deprecated, c.consistent_hashing_lb_config) {
                (Some(_), Some(_)) => {
                    return Err((
                        format!("{at}.consistent_hashing_lb_config"),
                        "use_hostname_for_hashing/hash_balance_factor are also given at the top of the policy (their deprecated place): give them once".into(),
                    ))
                }
                (a, b) => a.or(b),
            };
        }
        LbPolicy::Maglev => {
            let c: Maglev = parse(v, at)?;
            out.locality_weighted = c.locality_weighted_lb_config.is_some();
            out.maglev = c.table_size.map(|n| MaglevLbConfig {
                table_size: Some(n),
            });
            out.consistent_hashing = c.consistent_hashing_lb_config;
        }
    }
    Ok(out)
}
