//! The native configuration shape, exactly as an operator writes it.
//!
//! These are plain data: nothing here is looked at by the data plane. `route::compile`
//! turns a validated [`Config`] into the immutable runtime snapshot.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole configuration: what `tickmesh run --config` loads and what `apply -f` upserts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
}

/// One bound address and what happens to traffic arriving on it (its L4 route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// Route every connection to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
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
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    #[serde(alias = "ROUND_ROBIN")]
    RoundRobin,
    /// Power of two choices on active connections.
    #[serde(alias = "LEAST_REQUEST")]
    LeastRequest,
    #[serde(alias = "RANDOM")]
    Random,
    /// Consistent hashing on the client's source address.
    #[serde(alias = "MAGLEV")]
    Maglev,
}

/// An upstream address with a weight. Written either as `"127.0.0.1:9000"` or as
/// `{address: "127.0.0.1:9000", weight: 2}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.weight == 1 {
            return s.collect_str(&self.address);
        }
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("address", &self.address)?;
        m.serialize_entry("weight", &self.weight)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint: \"ip:port\" or {address: \"ip:port\", weight: N}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                let address = v.parse().map_err(|_| {
                    E::custom(format!("invalid endpoint address `{v}`, expected ip:port"))
                })?;
                Ok(Endpoint { address, weight: 1 })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Endpoint, A::Error> {
                let (mut address, mut weight) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => address = Some(map.next_value::<SocketAddr>()?),
                        "weight" => weight = Some(map.next_value::<u32>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["address", "weight"]))
                        }
                    }
                }
                let address = address.ok_or_else(|| de::Error::missing_field("address"))?;
                Ok(Endpoint {
                    address,
                    weight: weight.unwrap_or(1),
                })
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
        humantime::parse_duration(&s).map(Some).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration `{s}` ({e}); write e.g. \"250ms\" or \"5s\""
            ))
        })
    }
}
