//! The control protocol's messages: one JSON object per line each way.
//!
//! Owns the wire shapes only (shared by the daemon's server and the CLI client) and the
//! parsing of one request line into a [`Request`] with an error that says what is wrong
//! with it. Never does I/O. The README's "Control protocol" section documents these
//! shapes; change both together.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::cli::GetWhat;
use crate::config::{Config, Format, Kind, Problem, Protocol};

/// Longest request line the daemon reads (the newline excluded).
pub const MAX_REQUEST: usize = 4 << 20;

/// The ops a request may name, for error messages.
pub const OPS: &[&str] = &["apply", "delete", "get", "stats"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Upsert every resource in `config` (the text of a config file); with `prune`, make
    /// it the whole config.
    Apply {
        config: String,
        #[serde(default = "yaml")]
        format: Format,
        #[serde(default)]
        prune: bool,
    },
    /// Remove one resource.
    Delete { kind: Kind, name: String },
    /// The running config and compiled routes; `what` narrows it (absent: everything).
    Get {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        what: Option<GetWhat>,
    },
    /// Counters of every listener, cluster and endpoint in the running table.
    Stats {},
}

fn yaml() -> Format {
    Format::Yaml
}

impl Request {
    /// Parse one request line. The error is the message the response carries.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
            format!("malformed JSON request ({e}); send one JSON object per line, e.g. {{\"op\":\"get\"}}")
        })?;
        let op = match v.get("op") {
            Some(serde_json::Value::String(op)) => op.clone(),
            Some(_) => return Err("`op` must be a string".into()),
            None if v.is_object() => {
                return Err(format!(
                    "the request has no `op`; expected one of {}",
                    OPS.join(", ")
                ))
            }
            None => return Err("a request must be a JSON object with an `op` field".into()),
        };
        if !OPS.contains(&op.as_str()) {
            return Err(format!(
                "unknown op `{op}`; expected one of {}",
                OPS.join(", ")
            ));
        }
        serde_json::from_value(v).map_err(|e| format!("invalid `{op}` request: {e}"))
    }
}

/// One response line. `ok: false` carries `error` and, for a rejected config, `problems`
/// (each with a field path and, when known, the line in the applied text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                error: None,
                problems: Vec::new(),
                result: Some(v),
            },
            Err(e) => Response::error(format!("internal error encoding the result: {e}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            problems: Vec::new(),
            result: None,
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // A Response is plain data (strings, numbers, JSON values): encoding cannot fail.
        let mut v = serde_json::to_vec(self).expect("a Response always encodes");
        v.push(b'\n');
        v
    }
}

/// What an accepted (or no-op) apply or delete did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeResult {
    pub generation: u64,
    /// `kind/name` → `created` | `configured` | `unchanged` | `pruned` | `deleted`.
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Pruned,
    Deleted,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = super::state::kind_label(self.kind);
        let action = match self.action {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::Deleted => "deleted",
        };
        write!(f, "{kind}/{} {action}", self.name)
    }
}

/// The answer to `get`. Fields not asked for are absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResult {
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Config>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RouteView>>,
    /// Every cluster of the running table with the policy it runs with (after
    /// DestinationRules and defaults), including clusters routes created implicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<ClusterView>>,
}

/// One compiled cluster as the workers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub name: String,
    /// `address` or `address (priority N)`.
    pub endpoints: Vec<String>,
    /// Balancer, breakers, connect timeout, outlier detection, health check.
    pub policy: String,
}

/// One compiled L4 route as the workers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub listener: String,
    pub protocol: Protocol,
    /// The bound address (a configured port 0 shows the port the kernel chose).
    pub address: SocketAddr,
    /// Each target cluster with its share in percent of new connections.
    pub clusters: Vec<RouteTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTarget {
    pub cluster: String,
    pub weight: u32,
    pub endpoints: Vec<SocketAddr>,
}

/// The answer to `stats`: every resource of the running table with its counters, summed
/// and per worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResult {
    pub generation: u64,
    pub workers: usize,
    pub listeners: Vec<ListenerStatsView>,
    pub clusters: Vec<ClusterStatsView>,
    /// TLS certificates in use and how long each has left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateView>,
    /// Packet engine (DPDK) counter blocks: `port/NAME` (per port, per queue pair =
    /// worker), `vip/NAME` and `backend/CLUSTER/ADDR`; empty on the socket engines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packets: Vec<PacketStatsView>,
    /// The TLS record offload engines (once a worker served TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadView>,
    /// The socket engines' worker loops: busy time (turns that did work) against the
    /// worker's clock, per worker (`busy_ns`, `clock_ns`, `busy_turns`, `events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_loops: Option<WorkerLoopsView>,
}

/// The worker loops' busy time: a poll-mode worker uses a whole core whatever the load;
/// `busy_ns ÷ clock_ns` is the share of it that did work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoopsView {
    pub per_worker: Vec<CounterMap>,
}

/// One packet-engine counter block, summed and per worker (= per queue pair).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacketStatsView {
    pub name: String,
    pub counters: CounterMap,
    pub per_worker: Vec<CounterMap>,
}

/// The workers' offload engines: backend per worker, sessions, records and bytes
/// sealed/opened, jobs in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadView {
    /// Backend name per worker (`none` before its first TLS connection).
    pub backends: Vec<String>,
    pub counters: CounterMap,
    pub per_worker: Vec<CounterMap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateView {
    /// `listener NAME` or `cluster NAME`.
    pub owner: String,
    pub path: std::path::PathBuf,
    pub subject: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// Negative once expired.
    pub seconds_remaining: i64,
    /// Below the `offload.expiry_warning` threshold (default 7 days).
    pub warning: bool,
}

pub type CounterMap = BTreeMap<String, u64>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatsView {
    pub name: String,
    pub protocol: Protocol,
    pub address: SocketAddr,
    /// Open connections (TCP) or live sessions (UDP).
    pub active: u64,
    pub counters: CounterMap,
    pub per_worker: Vec<CounterMap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatsView {
    pub name: String,
    pub active: u64,
    pub counters: CounterMap,
    pub per_worker: Vec<CounterMap>,
    pub endpoints: Vec<EndpointStatsView>,
    /// Ejections outlier detection refused because of `max_ejection_percent`.
    #[serde(default)]
    pub ejections_overflow: u64,
    /// Ejections by success rate and by failure percentage.
    #[serde(default)]
    pub ejections_success_rate: u64,
    #[serde(default)]
    pub ejections_failure_percentage: u64,
    /// Split counting (`split_external_local_origin_errors`): ejections by consecutive
    /// local-origin failures, local-origin success rate and failure percentage.
    #[serde(default)]
    pub ejections_local_origin: u64,
    #[serde(default)]
    pub ejections_local_origin_success_rate: u64,
    #[serde(default)]
    pub ejections_local_origin_failure_percentage: u64,
    /// Ejections a passing active health check ended early
    /// (`successful_active_health_check_uneject_host`).
    #[serde(default)]
    pub unejections_by_check: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatsView {
    pub address: SocketAddr,
    pub active: u64,
    pub counters: CounterMap,
    pub per_worker: Vec<CounterMap>,
    /// Outlier detection and active health-check state.
    #[serde(default)]
    pub health: EndpointHealthView,
    /// Priority level (0 serves first).
    #[serde(default)]
    pub priority: u32,
}

/// One endpoint's health as `stats` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointHealthView {
    /// `healthy`, `ejected` (outlier detection), `unhealthy` (failing its active check)
    /// or `ejected,unhealthy`.
    pub state: String,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    /// Split counting only (0 otherwise).
    #[serde(default)]
    pub consecutive_local_origin_failures: u32,
    /// The current ejection multiplier (decays while healthy) and every ejection so far.
    pub times_ejected: u32,
    pub ejections_total: u64,
    /// Milliseconds until an ejected endpoint may return (0: not ejected; it returns at
    /// the first outlier `interval` tick after that).
    pub ejected_remaining_ms: u64,
    pub checks_total: u64,
    pub checks_failed: u64,
    /// Success rate (percent) of the last outlier interval with request volume enough
    /// (`success_rate_request_volume`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// Split counting: the local-origin success rate of the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_success_rate: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            Request::parse(br#"{"op":"apply","config":"clusters: []"}"#).unwrap(),
            Request::Apply {
                config: "clusters: []".into(),
                format: Format::Yaml,
                prune: false
            }
        );
        assert_eq!(
            Request::parse(br#"{"op":"get","what":"routes"}"#).unwrap(),
            Request::Get {
                what: Some(GetWhat::Routes)
            }
        );
        assert_eq!(
            Request::parse(br#"{"op":"delete","kind":"cluster","name":"a"}"#).unwrap(),
            Request::Delete {
                kind: Kind::Cluster,
                name: "a".into()
            }
        );
        assert_eq!(
            Request::parse(br#"{"op":"stats"}"#).unwrap(),
            Request::Stats {}
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"op":"get""#, "malformed JSON"),
            (b"", "malformed JSON"),
            (b"\xff\xfe", "malformed JSON"),
            (br#"[1,2]"#, "JSON object"),
            (br#"{"what":"routes"}"#, "no `op`"),
            (br#"{"op":7}"#, "must be a string"),
            (br#"{"op":"reboot"}"#, "unknown op `reboot`"),
            (br#"{"op":"apply"}"#, "missing field `config`"),
            (
                br#"{"op":"apply","config":"","format":"xml"}"#,
                "unknown variant `xml`",
            ),
            (br#"{"op":"get","what":"pods"}"#, "unknown variant `pods`"),
            (
                br#"{"op":"delete","kind":"cluster"}"#,
                "missing field `name`",
            ),
            (
                br#"{"op":"stats","verbose":true}"#,
                "unknown field `verbose`",
            ),
        ];
        for (line, want) in cases {
            let e = Request::parse(line).unwrap_err();
            assert!(
                e.contains(want),
                "{:?}: {e:?} should say {want:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn responses_are_one_line() {
        let r = Response::error("a\nb");
        let line = r.to_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Response = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
    }
}
