//! Configuration: the operator's YAML/TOML, parsed into plain structs and validated.
//!
//! Owns the native config shape, parsing with errors that name the field path and line,
//! whole-config validation (names, cross-references, ranges) and the `apply`/`delete`
//! merge rules. Never touches sockets or the data plane: `route::compile` turns a valid
//! [`Config`] into the runtime snapshot.

mod check_l7;
pub mod envoy;
pub mod http;
pub mod istio;
pub mod lb_policy;
mod load;
mod model;
pub mod tls;
pub mod traffic_policy;

pub use load::{locate, parse, parse_only, validate, ConfigError, Format, Problem};
pub use model::{
    CircuitBreakers, Cluster, Config, ConsistentHashingLbConfig, Discovery, Endpoint,
    EndpointAddress, Forwarding, HashPolicy, HealthCheck, HttpHealthCheck, LbPolicy,
    LeastRequestLbConfig, Listener, MaglevLbConfig, NicSettings, OutlierDetection, Percent,
    Protocol, RingHashFunction, RingHashLbConfig, RoundRobinLbConfig, RuntimeDouble,
    SlowStartConfig, StatusRange, WeightedCluster,
};

/// The config `tickmesh run` serves when given none and nothing is persisted.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");

/// The kinds of named resource a config holds (what `delete KIND NAME` takes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[value(alias = "listeners")]
    Listener,
    #[value(alias = "clusters")]
    Cluster,
    /// An HTTP route configuration.
    #[value(alias = "route_config", alias = "routeconfig")]
    RouteConfig,
    #[value(alias = "virtualservice", alias = "vs")]
    VirtualService,
    #[value(alias = "destinationrule", alias = "dr")]
    DestinationRule,
    #[value(alias = "peerauthentication", alias = "pa")]
    PeerAuthentication,
}

impl Config {
    /// `kubectl apply` semantics: every resource named in `patch` replaces (or adds) the
    /// one of the same kind and name; with `prune`, `patch` becomes the whole config.
    /// The result still has to pass [`validate`].
    pub fn applied(&self, patch: &Config, prune: bool) -> Config {
        if prune {
            return patch.clone();
        }
        let mut out = self.clone();
        upsert(&mut out.listeners, &patch.listeners, |l| &l.name);
        upsert(&mut out.clusters, &patch.clusters, |c| &c.name);
        upsert(&mut out.route_configs, &patch.route_configs, |r| &r.name);
        upsert(&mut out.virtual_services, &patch.virtual_services, |r| {
            &r.metadata.name
        });
        upsert(&mut out.destination_rules, &patch.destination_rules, |r| {
            &r.metadata.name
        });
        upsert(
            &mut out.peer_authentications,
            &patch.peer_authentications,
            |r| &r.metadata.name,
        );
        if patch.offload.is_some() {
            out.offload = patch.offload.clone();
        }
        if patch.nic.is_some() {
            out.nic = patch.nic.clone();
        }
        if patch.node.is_some() {
            out.node = patch.node.clone();
        }
        out
    }

    /// The config without the named resource, or `None` when there is no such resource.
    pub fn without(&self, kind: Kind, name: &str) -> Option<Config> {
        let mut out = self.clone();
        let removed = match kind {
            Kind::Listener => remove(&mut out.listeners, name, |l| &l.name),
            Kind::Cluster => remove(&mut out.clusters, name, |c| &c.name),
            Kind::RouteConfig => remove(&mut out.route_configs, name, |r| &r.name),
            Kind::VirtualService => remove(&mut out.virtual_services, name, |r| &r.metadata.name),
            Kind::DestinationRule => remove(&mut out.destination_rules, name, |r| &r.metadata.name),
            Kind::PeerAuthentication => {
                remove(&mut out.peer_authentications, name, |r| &r.metadata.name)
            }
        };
        removed.then_some(out)
    }
}

fn upsert<T: Clone>(into: &mut Vec<T>, from: &[T], name: impl Fn(&T) -> &String) {
    for item in from {
        match into.iter_mut().find(|x| name(x) == name(item)) {
            Some(slot) => *slot = item.clone(),
            None => into.push(item.clone()),
        }
    }
}

fn remove<T>(from: &mut Vec<T>, target: &str, name: impl Fn(&T) -> &String) -> bool {
    let before = from.len();
    from.retain(|x| name(x) != target);
    from.len() != before
}

#[cfg(test)]
mod tests;
