//! The operator's side of the control socket: `tickmesh apply | delete | get | stats`.
//!
//! Owns connecting, sending one request line, reading one response line, and printing it
//! for a person (tables, YAML) or a program (`--json`, `-o json`). Errors carry the
//! daemon's message with each config problem on its own line, so the process exits
//! non-zero with something the operator can act on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::protocol::{
    Action, ChangeResult, CounterMap, GetResult, Request, Response, RouteView, StatsResult,
};
use crate::cli::{ApplyArgs, DeleteArgs, GetArgs, GetWhat, Output, StatsArgs};

/// How long to wait for the daemon's answer (an apply compiles and fsyncs; seconds at most).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Send one request to the daemon at `path` and return its response as sent (`ok` true
/// or false). Errors are about reaching the daemon, not about the request.
pub fn request(path: &Path, req: &Request) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "the tickmesh daemon is not running at {} (nothing listens on that control socket); start it with `tickmesh run` or pass --control PATH",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied opening {}: the control socket is owner-only; run as root or as the daemon's user",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!("connecting to {}", path.display())),
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = serde_json::to_vec(req).context("encoding the request")?;
    line.push(b'\n');
    // A refused peer (wrong uid) gets its answer and is closed without being read, so a
    // failed write is not the end: the answer may be waiting.
    let sent = (&stream).write_all(&line);
    let mut reader = BufReader::new(&stream);
    let mut answer = Vec::new();
    let read = reader.read_until(b'\n', &mut answer);
    if answer.is_empty() {
        if let Err(e) = sent {
            return Err(e).context(format!("sending to the daemon at {}", path.display()));
        }
        read.with_context(|| format!("waiting for the daemon at {}", path.display()))?;
        bail!(
            "the daemon at {} closed the connection without answering",
            path.display()
        );
    }
    serde_json::from_slice(&answer).with_context(|| {
        format!(
            "the daemon at {} sent an answer that is not a tickmesh response",
            path.display()
        )
    })
}

/// The result of an `ok` response, or the daemon's error with one problem per line
/// (prefixed with `source` when the problems are about a file).
fn result<T: serde::de::DeserializeOwned>(r: Response, source: Option<&str>) -> anyhow::Result<T> {
    if !r.ok {
        let mut msg = r
            .error
            .unwrap_or_else(|| "the daemon refused the request".into());
        for p in &r.problems {
            msg.push_str("\n  ");
            if let Some(s) = source {
                msg.push_str(s);
                msg.push_str(": ");
            }
            msg.push_str(&p.to_string());
        }
        bail!(msg);
    }
    let v = r
        .result
        .context("the daemon's answer has no result; is it the same tickmesh version?")?;
    serde_json::from_value(v).context("the daemon's result has an unexpected shape")
}

pub fn apply(a: &ApplyArgs) -> anyhow::Result<()> {
    let (config, format) = crate::cli::read_config_file(&a.file)?;
    let r = request(
        &a.control.path(),
        &Request::Apply {
            config,
            format,
            prune: a.prune,
        },
    )?;
    let name = a.file.display().to_string();
    let done: ChangeResult = result(r, Some(&name))?;
    print_changes(&done);
    Ok(())
}

pub fn delete(a: &DeleteArgs) -> anyhow::Result<()> {
    let r = request(
        &a.control.path(),
        &Request::Delete {
            kind: a.kind,
            name: a.name.clone(),
        },
    )?;
    let done: ChangeResult = result(r, None)?;
    print_changes(&done);
    Ok(())
}

fn print_changes(r: &ChangeResult) {
    for c in &r.changes {
        println!("{c}");
    }
    if r.changes.iter().all(|c| c.action == Action::Unchanged) {
        println!("generation {} (no change)", r.generation);
    } else {
        println!("generation {}", r.generation);
    }
}

pub fn get(a: &GetArgs) -> anyhow::Result<()> {
    let r = request(&a.control.path(), &Request::Get { what: a.what })?;
    let g: GetResult = result(r, None)?;
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&g)?),
        Output::Yaml => print!("{}", get_yaml(&g, a.what)?),
    }
    Ok(())
}

/// The config as YAML that `apply -f` takes back, headed by its generation; the compiled
/// routes as comments after it (or as YAML for `get routes`).
fn get_yaml(g: &GetResult, what: Option<GetWhat>) -> anyhow::Result<String> {
    let mut out = format!("# generation {}\n", g.generation);
    if what == Some(GetWhat::Routes) {
        out.push_str(&serde_yaml::to_string(&g.routes)?);
        return Ok(out);
    }
    if let Some(c) = &g.config {
        if c.listeners.is_empty() && c.clusters.is_empty() {
            out.push_str("# (empty)\n");
        } else {
            out.push_str(&serde_yaml::to_string(c)?);
        }
    }
    if let Some(routes) = &g.routes {
        out.push_str("# routes as compiled:\n");
        for r in routes {
            out.push_str(&format!("#   {}\n", route_line(r)));
        }
    }
    if let Some(clusters) = &g.clusters {
        out.push_str("# clusters as compiled:\n");
        for c in clusters {
            out.push_str(&format!(
                "#   {} [{}]: {}\n",
                c.name,
                c.endpoints.join(", "),
                c.policy
            ));
        }
    }
    Ok(out)
}

fn route_line(r: &RouteView) -> String {
    let targets: Vec<String> = r
        .clusters
        .iter()
        .map(|t| {
            let eps: Vec<String> = t.endpoints.iter().map(|e| e.to_string()).collect();
            if r.clusters.len() == 1 {
                format!("{} [{}]", t.cluster, eps.join(", "))
            } else {
                format!("{} weight {} [{}]", t.cluster, t.weight, eps.join(", "))
            }
        })
        .collect();
    format!(
        "{} {} {} -> {}",
        r.listener,
        r.protocol,
        r.address,
        targets.join("; ")
    )
}

pub fn stats(a: &StatsArgs) -> anyhow::Result<()> {
    let r = request(&a.control.path(), &Request::Stats {})?;
    let s: StatsResult = result(r, None)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", stats_table(&s));
    }
    Ok(())
}

fn c(m: &CounterMap, name: &str) -> u64 {
    m.get(name).copied().unwrap_or(0)
}

/// The human view of `stats`: listeners, clusters with their endpoints, then connections
/// per worker.
pub fn stats_table(s: &StatsResult) -> String {
    use crate::config::Protocol;
    let mut out = format!("generation {}, {} worker(s)\n\n", s.generation, s.workers);
    let mut t = vec![row(&[
        "LISTENER",
        "PROTO",
        "ADDRESS",
        "ACTIVE",
        "TOTAL",
        "BYTES_IN",
        "BYTES_OUT",
        "REFUSED",
        "ERRORS",
    ])];
    for l in &s.listeners {
        let m = &l.counters;
        let total = match l.protocol {
            Protocol::Udp => c(m, "udp_sessions_total"),
            _ => c(m, "cx_total"),
        };
        t.push(vec![
            l.name.clone(),
            l.protocol.to_string(),
            l.address.to_string(),
            l.active.to_string(),
            total.to_string(),
            c(m, "bytes_from_downstream").to_string(),
            c(m, "bytes_to_downstream").to_string(),
            (c(m, "cx_overflow") + c(m, "no_upstream")).to_string(),
            (c(m, "errors") + c(m, "downstream_resets")).to_string(),
        ]);
    }
    out.push_str(&table(&t, 3));
    out.push('\n');

    let mut t = vec![row(&[
        "CLUSTER/ENDPOINT",
        "ACTIVE",
        "TOTAL",
        "CONNECT_FAIL",
        "TIMEOUTS",
        "BYTES_SENT",
        "BYTES_RECV",
        "RESETS",
        "ERRORS",
        "HEALTH",
    ])];
    let upstream = |name: String, active: u64, m: &CounterMap, health: String| {
        vec![
            name,
            active.to_string(),
            c(m, "cx_total").to_string(),
            c(m, "connect_fail").to_string(),
            c(m, "connect_timeout").to_string(),
            c(m, "bytes_sent").to_string(),
            c(m, "bytes_received").to_string(),
            c(m, "upstream_resets").to_string(),
            c(m, "errors").to_string(),
            health,
        ]
    };
    for cl in &s.clusters {
        let overflow = [
            (cl.ejections_overflow, "ejection(s) over max%"),
            (cl.ejections_success_rate, "ejected by success rate"),
            (cl.ejections_failure_percentage, "ejected by failure %"),
            (
                cl.ejections_local_origin,
                "ejected by local-origin failures",
            ),
            (
                cl.ejections_local_origin_success_rate,
                "ejected by local-origin success rate",
            ),
            (
                cl.ejections_local_origin_failure_percentage,
                "ejected by local-origin failure %",
            ),
            (cl.unejections_by_check, "returned by a passing check"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ");
        t.push(upstream(cl.name.clone(), cl.active, &cl.counters, overflow));
        for e in &cl.endpoints {
            let h = &e.health;
            let health = match h.ejected_remaining_ms {
                0 if h.times_ejected == 0 => h.state.clone(),
                0 => format!("{} (x{})", h.state, h.times_ejected),
                ms => format!(
                    "{} (x{}, {:.1}s left)",
                    h.state,
                    h.times_ejected,
                    ms as f64 / 1000.0
                ),
            };
            let name = match e.priority {
                0 => format!("  {}", e.address),
                p => format!("  {} (priority {p})", e.address),
            };
            t.push(upstream(name, e.active, &e.counters, health));
        }
    }
    out.push_str(&table(&t, 1));

    if !s.certificates.is_empty() {
        out.push('\n');
        let mut t = vec![row(&[
            "CERTIFICATE",
            "OWNER",
            "SUBJECT",
            "EXPIRES_IN_S",
            "",
        ])];
        for c in &s.certificates {
            t.push(vec![
                c.path.display().to_string(),
                c.owner.clone(),
                c.subject.clone(),
                c.seconds_remaining.to_string(),
                if c.warning {
                    "WARNING: rotate soon".into()
                } else {
                    String::new()
                },
            ]);
        }
        out.push_str(&table(&t, 3));
    }

    if let Some(o) = &s.offload {
        out.push('\n');
        let mut t = vec![row(&[
            "OFFLOAD",
            "SESSIONS",
            "RECORDS_SEALED",
            "RECORDS_OPENED",
            "BYTES_SEALED",
            "BYTES_OPENED",
            "IN_FLIGHT",
            "FAILED",
        ])];
        let mut backends = o.backends.clone();
        backends.dedup();
        let m = &o.counters;
        t.push(vec![
            backends.join(","),
            c(m, "sessions").to_string(),
            c(m, "records_sealed").to_string(),
            c(m, "records_opened").to_string(),
            c(m, "bytes_sealed").to_string(),
            c(m, "bytes_opened").to_string(),
            c(m, "in_flight").to_string(),
            c(m, "jobs_failed").to_string(),
        ]);
        out.push_str(&table(&t, 1));
    }

    if !s.packets.is_empty() {
        out.push_str(&packet_tables(s));
    }

    if let Some(wl) = &s.worker_loops {
        // Since the worker started; `tickmesh bench` takes the difference over its window.
        out.push_str(
            "
worker loops: busy share of wall time since start (turns that did work)
",
        );
        let mut t = vec![row(&["WORKER", "BUSY", "BUSY_S", "UP_S", "EVENTS/TURN"])];
        for (w, m) in wl.per_worker.iter().enumerate() {
            let (busy, clock) = (c(m, "busy_ns"), c(m, "clock_ns"));
            let turns = c(m, "busy_turns");
            t.push(vec![
                format!("W{w}"),
                format!("{:.1}%", busy as f64 * 100.0 / clock.max(1) as f64),
                format!("{:.3}", busy as f64 / 1e9),
                format!("{:.3}", clock as f64 / 1e9),
                if turns == 0 {
                    "–".into()
                } else {
                    format!("{:.2}", c(m, "events") as f64 / turns as f64)
                },
            ]);
        }
        out.push_str(&table(&t, 1));
    }

    if s.workers > 1 {
        out.push_str("\nconnections per worker (total)\n");
        let mut head = vec!["NAME".to_string()];
        head.extend((0..s.workers).map(|w| format!("W{w}")));
        let mut t = vec![head];
        let per = |name: String, pw: &[CounterMap], key: &str| {
            let mut r = vec![name];
            r.extend(pw.iter().map(|m| c(m, key).to_string()));
            r
        };
        for l in &s.listeners {
            let key = match l.protocol {
                Protocol::Udp => "udp_sessions_total",
                _ => "cx_total",
            };
            t.push(per(l.name.clone(), &l.per_worker, key));
        }
        for cl in &s.clusters {
            for e in &cl.endpoints {
                t.push(per(
                    format!("{}/{}", cl.name, e.address),
                    &e.per_worker,
                    "cx_total",
                ));
            }
        }
        out.push_str(&table(&t, 1));
    }
    out
}

/// The packet engine's (DPDK) blocks: ports, then VIPs and backends; every non-zero drop
/// and exception reason of a port on its own line below the tables.
fn packet_tables(s: &StatsResult) -> String {
    let sum = |m: &CounterMap, prefix: &str| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    };
    let mut out = String::from("\n");
    let mut t = vec![row(&[
        "PORT",
        "RX_PKTS",
        "RX_BYTES",
        "TX_PKTS",
        "TX_BYTES",
        "DROPS",
        "EXCEPTION",
        "FLOWS",
    ])];
    let mut reasons = Vec::new();
    for p in s.packets.iter().filter(|p| p.name.starts_with("port/")) {
        let m = &p.counters;
        t.push(vec![
            p.name.clone(),
            c(m, "rx_packets").to_string(),
            c(m, "rx_bytes").to_string(),
            c(m, "tx_packets").to_string(),
            c(m, "tx_bytes").to_string(),
            sum(m, "drop_").to_string(),
            sum(m, "exception_").to_string(),
            c(m, "flow_table_entries").to_string(),
        ]);
        for (k, v) in m {
            if *v > 0 && (k.starts_with("drop_") || k.starts_with("exception_")) {
                reasons.push(format!("{}: {k} {v}", p.name));
            }
        }
    }
    out.push_str(&table(&t, 1));
    out.push('\n');
    let mut t = vec![row(&[
        "VIP/BACKEND",
        "PACKETS",
        "BYTES",
        "REPLY_PKTS",
        "REPLY_BYTES",
        "FLOWS_NEW",
        "NO_BACKEND",
    ])];
    for p in s.packets.iter().filter(|p| !p.name.starts_with("port/")) {
        let m = &p.counters;
        t.push(vec![
            p.name.clone(),
            c(m, "packets").to_string(),
            c(m, "bytes").to_string(),
            c(m, "reply_packets").to_string(),
            c(m, "reply_bytes").to_string(),
            c(m, "flows_new").to_string(),
            c(m, "drop_no_backend").to_string(),
        ]);
    }
    out.push_str(&table(&t, 1));
    for r in reasons {
        out.push_str(&r);
        out.push('\n');
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// Columns padded to their widest cell; the first `left` columns left-aligned, the rest
/// (numbers) right-aligned.
fn table(rows: &[Vec<String>], left: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i < left {
                    format!("{s:<w$}", w = width[i])
                } else {
                    format!("{s:>w$}", w = width[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{
        ClusterStatsView, EndpointHealthView, EndpointStatsView, ListenerStatsView,
    };

    #[test]
    fn a_missing_daemon_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("none.sock");
        let e = request(&path, &Request::Stats {}).unwrap_err().to_string();
        assert!(e.contains("daemon is not running at"), "{e}");
        assert!(e.contains("none.sock"), "{e}");
    }

    #[test]
    fn get_yaml_lists_the_compiled_clusters_as_comments() {
        let g = GetResult {
            generation: 3,
            config: Some(Default::default()),
            routes: None,
            clusters: Some(vec![crate::control::protocol::ClusterView {
                name: "svc".into(),
                endpoints: vec!["127.0.0.1:1".into(), "127.0.0.1:2 (priority 1)".into()],
                policy: "lb random".into(),
            }]),
        };
        let y = get_yaml(&g, None).unwrap();
        assert!(
            y.contains("# clusters as compiled:\n#   svc [127.0.0.1:1, 127.0.0.1:2 (priority 1)]: lb random\n"),
            "{y}"
        );
        // Still YAML that `apply -f` takes back.
        crate::config::parse(&y, crate::config::Format::Yaml).unwrap();
    }

    #[test]
    fn the_stats_table_lines_up() {
        let m = |pairs: &[(&str, u64)]| -> CounterMap {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let s = StatsResult {
            generation: 4,
            workers: 2,
            certificates: vec![],
            packets: vec![
                crate::control::protocol::PacketStatsView {
                    name: "port/net_ring0".into(),
                    counters: m(&[("rx_packets", 1000), ("drop_bad_checksum", 3)]),
                    per_worker: vec![],
                },
                crate::control::protocol::PacketStatsView {
                    name: "vip/web".into(),
                    counters: m(&[("packets", 997), ("flows_new", 10)]),
                    per_worker: vec![],
                },
            ],
            offload: None,
            worker_loops: Some(crate::control::protocol::WorkerLoopsView {
                per_worker: vec![
                    m(&[("busy_ns", 250_000_000), ("clock_ns", 1_000_000_000)]),
                    m(&[("busy_ns", 0), ("clock_ns", 1_000_000_000)]),
                ],
            }),
            listeners: vec![ListenerStatsView {
                name: "orders".into(),
                protocol: crate::config::Protocol::Tcp,
                address: "127.0.0.1:7000".parse().unwrap(),
                active: 2,
                counters: m(&[("cx_total", 12), ("bytes_from_downstream", 123456)]),
                per_worker: vec![m(&[("cx_total", 5)]), m(&[("cx_total", 7)])],
            }],
            clusters: vec![ClusterStatsView {
                name: "gateway".into(),
                active: 2,
                counters: m(&[("cx_total", 12), ("connect_fail", 1)]),
                per_worker: vec![],
                endpoints: vec![EndpointStatsView {
                    address: "127.0.0.1:9000".parse().unwrap(),
                    active: 2,
                    counters: m(&[("cx_total", 12)]),
                    per_worker: vec![m(&[("cx_total", 5)]), m(&[("cx_total", 7)])],
                    health: EndpointHealthView {
                        state: "ejected".into(),
                        times_ejected: 1,
                        ejected_remaining_ms: 2500,
                        ..Default::default()
                    },
                    priority: 0,
                }],
                ejections_overflow: 0,
                ejections_success_rate: 0,
                ejections_failure_percentage: 0,
                ejections_local_origin: 0,
                ejections_local_origin_success_rate: 0,
                ejections_local_origin_failure_percentage: 0,
                unejections_by_check: 0,
            }],
        };
        let out = stats_table(&s);
        assert!(out.starts_with("generation 4, 2 worker(s)"), "{out}");
        let port = out
            .lines()
            .find(|l| l.starts_with("port/net_ring0"))
            .unwrap();
        assert!(port.contains("1000") && port.contains(" 3 "), "{out}");
        assert!(out.contains("port/net_ring0: drop_bad_checksum 3"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("vip/web") && l.contains("997")),
            "{out}"
        );
        let lines: Vec<&str> = out.lines().collect();
        let head = lines.iter().find(|l| l.starts_with("LISTENER")).unwrap();
        let orders = lines.iter().find(|l| l.starts_with("orders")).unwrap();
        assert_eq!(head.len(), orders.len(), "{out}");
        assert!(orders.contains("123456"), "{out}");
        assert!(out.contains("  127.0.0.1:9000"), "{out}");
        assert!(out.contains("ejected (x1, 2.5s left)"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("W0") && l.contains("25.0%") && l.contains("0.250")),
            "{out}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("gateway/127.0.0.1:9000") && l.ends_with("5   7")),
            "{out}"
        );
    }
}
