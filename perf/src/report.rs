//! The report: per-run records, medians and spread across runs, ratios between targets,
//! and its three renderings (terminal table, `report.json`, `report.md`).
//!
//! A run with any error is marked (`clean: false`) and kept in `runs`, but never enters a
//! median: medians are over clean runs only, and say how many there were. The JSON schema
//! is documented in `perf/README.md`; bump [`SCHEMA`] when a field changes meaning.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::args::{Scenario, Settings, Target};
use crate::hist::{median, Summary, PERCENTILES};
use crate::loadgen::Errors;
use crate::peers::PeerInfo;
use crate::sys::Machine;

pub const SCHEMA: &str = "tickmesh-bench/1";

/// The whole report (`report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    /// RFC 3339, UTC.
    pub generated_at: String,
    pub tickmesh_version: String,
    pub machine: Machine,
    pub settings: Settings,
    /// Per target: binary, version, command, tuning, generated config.
    pub peers: BTreeMap<String, PeerInfo>,
    pub scenarios: Vec<ScenarioReport>,
    /// Everything that went wrong, in order.
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub target: Target,
    pub run: u32,
    pub scenario: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub spec: Scenario,
    pub targets: Vec<TargetResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub target: Target,
    pub runs: Vec<RunRecord>,
    pub clean_runs: usize,
    /// Medians over clean runs (None when there was none).
    pub median: Option<Figures>,
    /// Min and max over clean runs.
    pub spread: Option<Spread>,
    /// target ÷ reference at each percentile and for throughput/CPU.
    pub ratio_to_direct: Option<Ratios>,
    pub ratio_to_floor: Option<Ratios>,
    pub ratio_to_tickmesh: Option<Ratios>,
    /// target − direct (ns) at each standard percentile.
    pub added_latency_ns: Option<Vec<(f64, f64)>>,
    /// `[percent, ns]` of all clean runs' requests together (what the plot draws).
    pub merged_distribution: Vec<(f64, u64)>,
}

/// One run of one target in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run: u32,
    /// No error of any kind and every request accounted for.
    pub clean: bool,
    /// Why the run failed or stopped, if it did.
    pub error: Option<String>,
    /// Open loop: the total rate offered (requests/s).
    pub offered_rps: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub errors: Errors,
    pub errors_total: u64,
    pub reconnects: u64,
    pub stale_replies: u64,
    pub window_s: f64,
    pub throughput_rps: f64,
    pub latency: Summary,
    /// The proxy process (and its children/threads); None for `direct`.
    pub proxy_cpu_s: Option<f64>,
    pub cpu_s_per_1k_requests: Option<f64>,
    /// Proxy CPU time ÷ wall time (1.0 = one core busy).
    pub cpu_utilization: Option<f64>,
    /// The generator's and backend's CPU time (this process) ÷ wall time: near the
    /// number of CPUs they have, they — not the proxy — set the pace.
    pub load_cpu_utilization: Option<f64>,
    /// The cores' worth of the proxy's time that did work (see `busy`): a spinning
    /// proxy's CPU time is a whole core whatever the load, this is not.
    pub proxy_busy_cores: Option<f64>,
    /// Why `proxy_busy_cores` is missing, when a source was expected.
    pub busy_note: Option<String>,
    pub rss_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    /// Open loop: the generator's own send delay (see `loadgen::LoadResult`), ns.
    pub generator_lag_ns: Option<Lag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl RunRecord {
    /// A run that produced no measurement.
    pub fn failed(run: u32, error: String) -> RunRecord {
        RunRecord {
            run,
            clean: false,
            error: Some(error),
            offered_rps: None,
            sent: 0,
            received: 0,
            errors: Errors::default(),
            errors_total: 0,
            reconnects: 0,
            stale_replies: 0,
            window_s: 0.0,
            throughput_rps: 0.0,
            latency: Summary::default(),
            proxy_cpu_s: None,
            cpu_s_per_1k_requests: None,
            cpu_utilization: None,
            load_cpu_utilization: None,
            proxy_busy_cores: None,
            busy_note: None,
            rss_kib: None,
            hwm_kib: None,
            generator_lag_ns: None,
        }
    }
}

/// Medians (over clean runs). Latencies in ns.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
    pub mean_ns: f64,
    /// `[percent, ns]` for every standard percentile.
    pub percentiles: Vec<(f64, f64)>,
    pub throughput_rps: f64,
    pub cpu_s_per_1k_requests: Option<f64>,
    pub cpu_utilization: Option<f64>,
    /// Median of the runs' `load_cpu_utilization`.
    pub load_cpu_utilization: Option<f64>,
    /// Median of the runs' `proxy_busy_cores`.
    pub busy_cores: Option<f64>,
    /// Median of the runs' throughput ÷ busy cores: requests per second per core of
    /// the proxy's *working* time (its capacity per core, as far as the load showed it).
    pub per_busy_core_rps: Option<f64>,
    pub rss_kib: Option<f64>,
    pub hwm_kib: Option<f64>,
}

/// `[min, max]` across clean runs.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub p50_ns: [f64; 2],
    pub p99_ns: [f64; 2],
    pub p999_ns: [f64; 2],
    pub max_ns: [f64; 2],
    pub throughput_rps: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Which target this is a ratio to.
    pub reference: Target,
    /// `[percent, ratio]` for every standard percentile.
    pub latency: Vec<(f64, f64)>,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub throughput: f64,
    pub cpu_per_request: Option<f64>,
}

fn med(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
    median(&v)
}

fn range(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> f64) -> [f64; 2] {
    let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    [
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ]
}

impl TargetResult {
    pub fn new(target: Target, runs: Vec<RunRecord>) -> TargetResult {
        let clean: Vec<&RunRecord> = runs.iter().filter(|r| r.clean).collect();
        let (median, spread) = if clean.is_empty() {
            (None, None)
        } else {
            let lat = |p: f64| med(&clean, |r| r.latency.at(p).map(|v| v as f64)).unwrap_or(0.0);
            let figures = Figures {
                p50_ns: lat(50.0),
                p99_ns: lat(99.0),
                p999_ns: lat(99.9),
                max_ns: lat(100.0),
                mean_ns: med(&clean, |r| Some(r.latency.mean_ns)).unwrap_or(0.0),
                percentiles: PERCENTILES.iter().map(|&p| (p, lat(p))).collect(),
                throughput_rps: med(&clean, |r| Some(r.throughput_rps)).unwrap_or(0.0),
                cpu_s_per_1k_requests: med(&clean, |r| r.cpu_s_per_1k_requests),
                cpu_utilization: med(&clean, |r| r.cpu_utilization),
                load_cpu_utilization: med(&clean, |r| r.load_cpu_utilization),
                busy_cores: med(&clean, |r| r.proxy_busy_cores),
                per_busy_core_rps: med(&clean, |r| {
                    r.proxy_busy_cores
                        .filter(|&b| b > 0.0)
                        .map(|b| r.throughput_rps / b)
                }),
                rss_kib: med(&clean, |r| r.rss_kib.map(|v| v as f64)),
                hwm_kib: med(&clean, |r| r.hwm_kib.map(|v| v as f64)),
            };
            let spread = Spread {
                p50_ns: range(&clean, |r| r.latency.p50_ns as f64),
                p99_ns: range(&clean, |r| r.latency.p99_ns as f64),
                p999_ns: range(&clean, |r| r.latency.p999_ns as f64),
                max_ns: range(&clean, |r| r.latency.max_ns as f64),
                throughput_rps: range(&clean, |r| r.throughput_rps),
            };
            (Some(figures), Some(spread))
        };
        TargetResult {
            target,
            clean_runs: clean.len(),
            runs,
            median,
            spread,
            ratio_to_direct: None,
            ratio_to_floor: None,
            ratio_to_tickmesh: None,
            added_latency_ns: None,
            merged_distribution: Vec::new(),
        }
    }
}

/// `a ÷ b`, when both exist and b is not zero.
fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

pub fn ratios(of: &Figures, to: &Figures, reference: Target) -> Ratios {
    Ratios {
        reference,
        latency: of
            .percentiles
            .iter()
            .zip(&to.percentiles)
            .map(|(&(p, a), &(_, b))| (p, ratio(a, b)))
            .collect(),
        p50: ratio(of.p50_ns, to.p50_ns),
        p99: ratio(of.p99_ns, to.p99_ns),
        p999: ratio(of.p999_ns, to.p999_ns),
        max: ratio(of.max_ns, to.max_ns),
        throughput: ratio(of.throughput_rps, to.throughput_rps),
        cpu_per_request: match (of.cpu_s_per_1k_requests, to.cpu_s_per_1k_requests) {
            (Some(a), Some(b)) => Some(ratio(a, b)),
            _ => None,
        },
    }
}

/// Fill in ratios and added latency once every target of a scenario is in.
pub fn relate(targets: &mut [TargetResult]) {
    let find = |t: Target, all: &[TargetResult]| {
        all.iter()
            .find(|r| r.target == t)
            .and_then(|r| r.median.clone())
    };
    let direct = find(Target::Direct, targets);
    let floor = find(Target::Floor, targets);
    let (tm_target, tm) = match find(Target::TickmeshUring, targets) {
        Some(f) => (Target::TickmeshUring, Some(f)),
        None => (Target::TickmeshEpoll, find(Target::TickmeshEpoll, targets)),
    };
    for r in targets.iter_mut() {
        let Some(m) = r.median.clone() else { continue };
        if let Some(d) = &direct {
            r.ratio_to_direct = Some(ratios(&m, d, Target::Direct));
            r.added_latency_ns = Some(
                m.percentiles
                    .iter()
                    .zip(&d.percentiles)
                    .map(|(&(p, a), &(_, b))| (p, a - b))
                    .collect(),
            );
        }
        if let Some(f) = &floor {
            r.ratio_to_floor = Some(ratios(&m, f, Target::Floor));
        }
        if let Some(t) = &tm {
            r.ratio_to_tickmesh = Some(ratios(&m, t, tm_target));
        }
    }
}

fn us(ns: f64) -> String {
    let v = ns / 1000.0;
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn x(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}×"),
        _ => "–".into(),
    }
}

/// One row per target: the terminal table and the markdown table share it.
fn rows(s: &ScenarioReport) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let head = vec![
        "target",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "req/s",
        "CPU ms/1k req",
        "busy cores",
        "req/s per busy core",
        "gen+backend CPU",
        "RSS MiB",
        "+p50 µs vs direct",
        "p50 ×floor",
        "p99.9 ×floor",
        "clean runs",
        "errors",
    ];
    let mut out = Vec::new();
    for t in &s.targets {
        let errors: u64 = t.runs.iter().map(|r| r.errors_total).sum();
        let failed = t.runs.iter().filter(|r| r.error.is_some()).count();
        let err_cell = match (errors, failed) {
            (0, 0) => "0".to_string(),
            (e, 0) => format!("{e} ✗"),
            (e, f) => format!("{e} ✗, {f} run(s) failed"),
        };
        let runs = format!("{}/{}", t.clean_runs, t.runs.len());
        let Some(m) = &t.median else {
            let mut row = vec![t.target.to_string()];
            row.resize(head.len() - 2, "–".to_string());
            row.push(runs);
            row.push(err_cell);
            out.push(row);
            continue;
        };
        out.push(vec![
            t.target.to_string(),
            us(m.p50_ns),
            us(m.p99_ns),
            us(m.p999_ns),
            us(m.max_ns),
            format!("{:.0}", m.throughput_rps),
            m.cpu_s_per_1k_requests
                .map_or("–".into(), |v| format!("{:.3}", v * 1000.0)),
            m.busy_cores.map_or("–".into(), |v| format!("{v:.3}")),
            m.per_busy_core_rps
                .map_or("–".into(), |v| format!("{v:.0}")),
            m.load_cpu_utilization
                .map_or("–".into(), |v| format!("{v:.2}")),
            m.rss_kib
                .map_or("–".into(), |v| format!("{:.1}", v / 1024.0)),
            t.added_latency_ns
                .as_ref()
                .and_then(|a| a.first())
                .map_or("–".into(), |&(_, v)| us(v)),
            x(t.ratio_to_floor.as_ref().map(|r| r.p50)),
            x(t.ratio_to_floor.as_ref().map(|r| r.p999)),
            runs,
            err_cell,
        ]);
    }
    (head, out)
}

fn scenario_title(r: &Report, s: &ScenarioReport) -> String {
    let st = &r.settings;
    format!(
        "{} — {} {} B, {} run(s) × {:.1} s (+{:.1} s warm-up), layout {:?}",
        s.scenario,
        st.workload.name(),
        st.size,
        st.runs,
        st.duration.as_secs_f64(),
        st.warmup.as_secs_f64(),
        st.layout
    )
    .replace("Split", "split")
    .replace("Shared", "shared")
}

/// tickmesh against the product's goals (DESIGN/issue 3), per scenario and engine:
/// added p50 ≤ 1.05 × floor's, p99.9 ≤ 0.7 × HAProxy's, throughput per proxy core
/// ≥ 1.5 × HAProxy's, CPU per request ≤ 0.7 × HAProxy's. Lines only for what was measured.
/// `tls-echo` has its own (issue 5): at or below HAProxy at every percentile.
pub fn goals(r: &Report) -> Vec<String> {
    if r.settings.workload == crate::args::Workload::TlsHandshake {
        return handshake_goals(&r.scenarios);
    }
    if r.settings.workload.is_tls() {
        return tls_goals(&r.scenarios);
    }
    let mut lines = Vec::new();
    for s in &r.scenarios {
        let get = |t: Target| s.targets.iter().find(|x| x.target == t);
        let m = |t: Target| get(t).and_then(|x| x.median.clone());
        let (floor, haproxy) = (get(Target::Floor), m(Target::Haproxy));
        for tm in [Target::TickmeshUring, Target::TickmeshEpoll] {
            let Some(t) = get(tm) else { continue };
            let Some(tmm) = &t.median else { continue };
            let mut parts = Vec::new();
            let added = |x: &TargetResult| {
                x.added_latency_ns
                    .as_ref()
                    .and_then(|a| a.first())
                    .map(|&(_, v)| v)
            };
            if let (Some(a), Some(f)) = (added(t), floor.and_then(added)) {
                parts.push(format!(
                    "added p50 {} µs vs floor's {} µs ({:.2}×, goal ≤ 1.05)",
                    us(a),
                    us(f),
                    ratio(a, f)
                ));
            }
            if let Some(h) = &haproxy {
                parts.push(format!(
                    "p99.9 {:.2}× HAProxy's (goal ≤ 0.7)",
                    ratio(tmm.p999_ns, h.p999_ns)
                ));
                let per_core = |f: &Figures| f.cpu_utilization.map(|u| ratio(f.throughput_rps, u));
                if let (Some(a), Some(b)) = (per_core(tmm), per_core(h)) {
                    parts.push(format!(
                        "throughput per proxy core {:.2}× HAProxy's (goal ≥ 1.5)",
                        ratio(a, b)
                    ));
                }
                if let (Some(a), Some(b)) = (tmm.per_busy_core_rps, h.per_busy_core_rps) {
                    parts.push(format!(
                        "req/s per busy core {a:.0} vs HAProxy's {b:.0} ({:.2}×)",
                        ratio(a, b)
                    ));
                }
                if let (Some(a), Some(b)) = (tmm.cpu_s_per_1k_requests, h.cpu_s_per_1k_requests) {
                    parts.push(format!(
                        "CPU per request {:.2}× HAProxy's (goal ≤ 0.7)",
                        ratio(a, b)
                    ));
                }
            }
            if !parts.is_empty() {
                lines.push(format!("{} {tm}: {}", s.scenario, parts.join("; ")));
            }
        }
    }
    lines
}

/// `tls-echo` against issue 5's goals: latency at or below HAProxy's at every percentile
/// (both terminate TLS); what terminating costs over the floor's passthrough, for reading;
/// throughput per core and CPU per request against HAProxy's, without a stated goal.
fn tls_goals(scenarios: &[ScenarioReport]) -> Vec<String> {
    let mut lines = Vec::new();
    for s in scenarios {
        let get = |t: Target| s.targets.iter().find(|x| x.target == t);
        let m = |t: Target| get(t).and_then(|x| x.median.clone());
        let (floor, haproxy) = (m(Target::Floor), m(Target::Haproxy));
        for tm in [Target::TickmeshUring, Target::TickmeshEpoll] {
            let Some(t) = m(tm) else { continue };
            let mut parts = Vec::new();
            if let Some(h) = &haproxy {
                parts.push(format!(
                    "p50/p99/p99.9 {:.2}/{:.2}/{:.2}× HAProxy's (goal ≤ 1 at every percentile)",
                    ratio(t.p50_ns, h.p50_ns),
                    ratio(t.p99_ns, h.p99_ns),
                    ratio(t.p999_ns, h.p999_ns)
                ));
                let per_core = |f: &Figures| f.cpu_utilization.map(|u| ratio(f.throughput_rps, u));
                if let (Some(a), Some(b)) = (per_core(&t), per_core(h)) {
                    parts.push(format!(
                        "throughput per proxy core {:.2}× HAProxy's",
                        ratio(a, b)
                    ));
                }
                if let (Some(a), Some(b)) = (t.cpu_s_per_1k_requests, h.cpu_s_per_1k_requests) {
                    parts.push(format!("CPU per request {:.2}× HAProxy's", ratio(a, b)));
                }
            }
            if let Some(f) = &floor {
                parts.push(format!(
                    "terminating costs {} µs at p50 over the floor's TLS passthrough",
                    us(t.p50_ns - f.p50_ns)
                ));
            }
            if !parts.is_empty() {
                lines.push(format!("{} {tm}: {}", s.scenario, parts.join("; ")));
            }
        }
    }
    lines
}

/// `tls-handshake` against issue 5's goal: full handshakes per second per proxy core
/// ≥ 1.3 × HAProxy's (handshakes/s over the proxy's CPU utilization, both measured in
/// the same run), with the CPU per handshake and the latency beside it.
fn handshake_goals(scenarios: &[ScenarioReport]) -> Vec<String> {
    let mut lines = Vec::new();
    for s in scenarios {
        let m = |t: Target| {
            s.targets
                .iter()
                .find(|x| x.target == t)
                .and_then(|x| x.median.clone())
        };
        let Some(h) = m(Target::Haproxy) else {
            continue;
        };
        for tm in [Target::TickmeshUring, Target::TickmeshEpoll] {
            let Some(t) = m(tm) else { continue };
            let mut parts = Vec::new();
            let per_core = |f: &Figures| f.cpu_utilization.map(|u| ratio(f.throughput_rps, u));
            if let (Some(a), Some(b)) = (per_core(&t), per_core(&h)) {
                parts.push(format!(
                    "handshakes/s per proxy core {a:.0} vs HAProxy's {b:.0} ({:.2}×, goal ≥ 1.3)",
                    ratio(a, b)
                ));
            }
            if let (Some(a), Some(b)) = (t.cpu_s_per_1k_requests, h.cpu_s_per_1k_requests) {
                parts.push(format!(
                    "CPU per handshake {:.1} vs {:.1} µs ({:.2}×)",
                    a * 1000.0,
                    b * 1000.0,
                    ratio(a, b)
                ));
            }
            parts.push(format!(
                "connect→echo p50/p99 {:.2}/{:.2}× HAProxy's",
                ratio(t.p50_ns, h.p50_ns),
                ratio(t.p99_ns, h.p99_ns)
            ));
            lines.push(format!("{} {tm}: {}", s.scenario, parts.join("; ")));
        }
    }
    lines
}

/// The terminal table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    for s in &r.scenarios {
        let (head, body) = rows(s);
        let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for row in &body {
            for (i, c) in row.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let _ = writeln!(out, "\n{}", scenario_title(r, s));
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = w[i] - c.chars().count();
                    if i == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(
            out,
            "{}",
            line(head.iter().map(|h| h.to_string()).collect())
        );
        for row in body {
            let _ = writeln!(out, "{}", line(row));
        }
    }
    let g = goals(r);
    if !g.is_empty() {
        let _ = writeln!(
            out,
            "\nAgainst the goals (medians; spinning proxies use a whole core whatever the load: \"per proxy core\" divides by CPU time, \"per busy core\" by the time the proxy spent working — see perf/README.md):"
        );
        for l in g {
            let _ = writeln!(out, "  {l}");
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\nProblems:");
        for f in &r.failures {
            let _ = writeln!(
                out,
                "  {} run {}{}: {}",
                f.target,
                f.run,
                f.scenario
                    .as_ref()
                    .map_or(String::new(), |s| format!(" {s}")),
                f.error
            );
        }
    }
    out
}

/// `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let st = &r.settings;
    let _ = writeln!(md, "# tickmesh bench report\n");
    let _ = writeln!(
        md,
        "Generated {} by tickmesh {}. Machine: {} ({} CPUs), {}, {}; load average at start {:.2} / {:.2} / {:.2} (1/5/15 min).\n",
        r.generated_at,
        r.tickmesh_version,
        m.cpu_model,
        m.nproc,
        m.kernel,
        m.os,
        m.load_average[0],
        m.load_average[1],
        m.load_average[2]
    );
    let _ = writeln!(
        md,
        "Workload `{}`, {} B; CPUs: generator {:?}, backend {:?}, proxy {:?}; proxy workers {}; request timeout {:.1} s. Latency = reply time − intended send time (open loop corrects coordinated omission); medians over clean runs, spread = min–max. A run with any error is marked ✗ and left out of the medians.\n",
        st.workload.name(),
        st.size,
        st.cpus.generator,
        st.cpus.backend,
        st.cpus.proxy,
        st.proxy_workers,
        st.request_timeout.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "`busy cores`: the proxy's working time in cores — tickmesh `spin`: its loop-turn meter (turns that submitted or completed I/O, syscall included); HAProxy `busy-polling`: 1 − `Idle_pct`; both × the CPU share the spinner got; sleeping proxies (nginx, HAProxy without busy-polling, tickmesh `park`): CPU time. `req/s per busy core` = throughput ÷ busy cores (median of runs). `gen+backend CPU`: the bench process's CPU time ÷ wall time. Details: perf/README.md.\n"
    );
    let notes: Vec<String> = r
        .scenarios
        .iter()
        .flat_map(|s| {
            s.targets.iter().flat_map(move |t| {
                t.runs.iter().filter_map(move |run| {
                    run.busy_note.as_ref().map(|n| {
                        format!(
                            "- {} {} run {}: no busy cores: {n}",
                            s.scenario, t.target, run.run
                        )
                    })
                })
            })
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "{}\n", notes.join("\n"));
    }
    for s in &r.scenarios {
        let _ = writeln!(md, "## {}\n", scenario_title(r, s));
        let _ = writeln!(
            md,
            "![latency by percentile](latency-{}.svg)\n",
            s.spec.slug()
        );
        let (head, body) = rows(s);
        let _ = writeln!(md, "| {} |", head.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(head.len()));
        for row in body {
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        let _ = writeln!(
            md,
            "\nRatios (p50 / p99 / p99.9 / max; throughput; CPU per request):\n"
        );
        let _ = writeln!(
            md,
            "| target | to direct | to floor | to tickmesh | spread p50 µs | spread p99.9 µs |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for t in &s.targets {
            let f = |r: &Option<Ratios>| match r {
                Some(r) => format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}; {:.2}; {}",
                    r.p50,
                    r.p99,
                    r.p999,
                    r.max,
                    r.throughput,
                    r.cpu_per_request.map_or("–".into(), |v| format!("{v:.2}"))
                ),
                None => "–".into(),
            };
            let sp = |a: Option<[f64; 2]>| {
                a.map_or("–".into(), |[lo, hi]| format!("{}–{}", us(lo), us(hi)))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                t.target,
                f(&t.ratio_to_direct),
                f(&t.ratio_to_floor),
                f(&t.ratio_to_tickmesh),
                sp(t.spread.as_ref().map(|s| s.p50_ns)),
                sp(t.spread.as_ref().map(|s| s.p999_ns)),
            );
        }
        md.push('\n');
    }
    let g = goals(r);
    if !g.is_empty() {
        let _ = writeln!(md, "## Against the goals\n");
        for l in g {
            let _ = writeln!(md, "- {l}");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Peers\n");
    for (name, p) in &r.peers {
        let _ = writeln!(
            md,
            "- **{name}**: {}",
            p.version.as_deref().unwrap_or("(version unknown)")
        );
        for s in &p.settings {
            let _ = writeln!(md, "  - {s}");
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Problems\n");
        for f in &r.failures {
            let _ = writeln!(
                md,
                "- {} run {}{}: {}",
                f.target,
                f.run,
                f.scenario
                    .as_ref()
                    .map_or(String::new(), |s| format!(" {s}")),
                f.error.replace('\n', " ")
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::new_histogram;

    fn rec(run: u32, p50_us: u64, clean: bool) -> RunRecord {
        let mut h = new_histogram();
        for _ in 0..10 {
            h.record(p50_us * 1000).unwrap();
        }
        let mut r = RunRecord::failed(run, String::new());
        r.error = None;
        r.clean = clean;
        r.latency = Summary::of(&h);
        r.sent = 10;
        r.received = 10;
        r.throughput_rps = 1000.0 * p50_us as f64;
        r
    }

    #[test]
    fn medians_skip_runs_with_errors_and_ratios_relate_targets() {
        let direct = TargetResult::new(
            Target::Direct,
            vec![rec(0, 10, true), rec(1, 12, true), rec(2, 500, false)],
        );
        let m = direct.median.as_ref().unwrap();
        assert_eq!(direct.clean_runs, 2);
        // Median of 10 and 12 µs (each as the histogram stores it, ≤ 0.1% high); the
        // errored 500 µs run is out.
        assert!((m.p50_ns - 11_000.0).abs() <= 11.0, "{}", m.p50_ns);
        let [lo, hi] = direct.spread.as_ref().unwrap().p50_ns;
        assert!((lo - 10_000.0).abs() <= 10.0 && (hi - 12_000.0).abs() <= 12.0);
        let floor = TargetResult::new(Target::Floor, vec![rec(0, 33, true)]);
        let broken = TargetResult::new(Target::Haproxy, vec![RunRecord::failed(0, "x".into())]);
        let mut all = vec![direct, floor, broken];
        relate(&mut all);
        let f = &all[1];
        assert!((f.ratio_to_direct.as_ref().unwrap().p50 - 3.0).abs() < 0.01);
        let (p, added) = f.added_latency_ns.as_ref().unwrap()[0];
        assert_eq!(p, 50.0);
        assert!((added - 22_000.0).abs() < 50.0, "{added}");
        assert!(all[2].median.is_none() && all[2].ratio_to_direct.is_none());
        assert!(all[0].ratio_to_tickmesh.is_none());
    }

    #[test]
    fn tls_goals_compare_with_haproxy_at_every_percentile_and_with_passthrough() {
        let mut targets = vec![
            TargetResult::new(Target::Direct, vec![rec(0, 10, true)]),
            TargetResult::new(Target::Floor, vec![rec(0, 15, true)]),
            TargetResult::new(Target::TickmeshEpoll, vec![rec(0, 20, true)]),
            TargetResult::new(Target::Haproxy, vec![rec(0, 40, true)]),
            // A target without a clean run gets no line.
            TargetResult::new(
                Target::TickmeshUring,
                vec![RunRecord::failed(0, "x".into())],
            ),
        ];
        relate(&mut targets);
        let sc = ScenarioReport {
            scenario: "closed:1".into(),
            spec: Scenario::Closed { connections: 1 },
            targets,
        };
        let lines = tls_goals(std::slice::from_ref(&sc));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert!(l.starts_with("closed:1 tickmesh-epoll:"), "{l}");
        assert!(l.contains("0.50/0.50/0.50× HAProxy's (goal ≤ 1"), "{l}");
        assert!(l.contains("terminating costs 5.0"), "{l}");
    }
}
