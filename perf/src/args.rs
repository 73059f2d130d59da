//! `tickmesh bench` arguments: what to run against what, where, and for how long.
//!
//! Owns parsing and validation of the operator's choices (targets, workloads, scenarios,
//! CPU placement) with messages that list what is accepted. Never starts anything.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

/// What sits between the load generator and the backend.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// No proxy: client → backend.
    Direct,
    /// The minimal epoll-spinning relay written for the harness: the floor of any kernel-socket proxy.
    Floor,
    /// `tickmesh run --engine uring`.
    TickmeshUring,
    /// `tickmesh run --engine epoll`.
    TickmeshEpoll,
    /// HAProxy (Debian 2.6), tuned for latency.
    Haproxy,
    /// nginx (Debian 1.22) stream/http proxy.
    Nginx,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Direct,
        Target::Floor,
        Target::TickmeshUring,
        Target::TickmeshEpoll,
        Target::Haproxy,
        Target::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Floor => "floor",
            Target::TickmeshUring => "tickmesh-uring",
            Target::TickmeshEpoll => "tickmesh-epoll",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
        }
    }

    pub fn is_tickmesh(self) -> bool {
        matches!(self, Target::TickmeshUring | Target::TickmeshEpoll)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The request/response exchange the generator drives.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// TCP request/response of `--size` bytes, echoed.
    TcpEcho,
    /// UDP datagram of `--size` bytes, echoed.
    UdpEcho,
    /// HTTP/1.1 keep-alive GET (response body `--size` bytes) or POST (`--size` bytes echoed).
    Http1,
    /// TCP echo of `--size` bytes inside TLS 1.3 (handshake before measuring): `direct`
    /// talks TLS to a TLS echo backend, proxies terminate TLS and relay plaintext to the
    /// plain echo backend, `floor` relays the TLS bytes to the TLS echo backend.
    TlsEcho,
    /// `http1` inside TLS 1.3 (handshake before measuring): `direct` talks TLS to a TLS
    /// HTTP backend, proxies terminate TLS and speak plain HTTP to the plain backend,
    /// `floor` relays the TLS bytes to the TLS HTTP backend.
    Https1,
    /// A full TLS 1.3 handshake per request: new TCP connection, handshake (no
    /// resumption), one echo of `--size` bytes inside TLS, close. Targets as for
    /// `tls-echo`; latency is connect → echo received, throughput is handshakes/s.
    TlsHandshake,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::TcpEcho => "tcp-echo",
            Workload::UdpEcho => "udp-echo",
            Workload::Http1 => "http1",
            Workload::TlsEcho => "tls-echo",
            Workload::Https1 => "https1",
            Workload::TlsHandshake => "tls-handshake",
        }
    }
    pub fn is_udp(self) -> bool {
        self == Workload::UdpEcho
    }
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Workload::TlsEcho | Workload::Https1 | Workload::TlsHandshake
        )
    }
    /// HTTP/1.1 requests and responses (in TLS or not).
    pub fn is_http(self) -> bool {
        matches!(self, Workload::Http1 | Workload::Https1)
    }
    /// Echo workloads: the reply is the request, byte for byte.
    pub fn is_echo(self) -> bool {
        !self.is_http()
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    Get,
    Post,
}

/// Where the processes run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Generator + backend on one CPU, the proxy on another, spinning (its best case).
    Split,
    /// Everything on one CPU; proxies yield/park when idle (cross-CPU wake-ups vanish).
    Shared,
}

/// What tickmesh's workers do when idle (its `--idle`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TickmeshIdle {
    /// Never sleep.
    Spin,
    /// Spin for `--tickmesh-spin-us`, then wait in the kernel until work arrives.
    Adaptive,
    /// Wait in the kernel at once.
    Park,
}

impl TickmeshIdle {
    pub fn as_str(self) -> &'static str {
        match self {
            TickmeshIdle::Spin => "spin",
            TickmeshIdle::Adaptive => "adaptive",
            TickmeshIdle::Park => "park",
        }
    }
}

/// Where tickmesh seals and opens TLS records (its config's `offload.backend`) in the TLS
/// workloads.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TickmeshOffload {
    /// `ring` AEADs inline in the worker's poll loop.
    Software,
    /// `ring` AEADs on a crypto thread per worker.
    SoftwareThreaded,
    /// DPDK cryptodev (a binary built with `--features dpdk`; a virtual crypto device
    /// when the host has no accelerator).
    Cryptodev,
    /// The kernel's TLS (needs the `tls` module).
    Ktls,
}

impl TickmeshOffload {
    /// The config's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            TickmeshOffload::Software => "software",
            TickmeshOffload::SoftwareThreaded => "software-threaded",
            TickmeshOffload::Cryptodev => "cryptodev",
            TickmeshOffload::Ktls => "ktls",
        }
    }

    /// How `tickmesh stats` names it once a worker runs it.
    pub fn stats_name(self) -> &'static str {
        match self {
            TickmeshOffload::Software => "software-inline",
            other => other.as_str(),
        }
    }
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Scenario {
    /// `connections` connections, each with one request in flight.
    Closed { connections: usize },
    /// A fixed total rate over `connections` connections, latency from the intended send time.
    Open { connections: usize, rate: Rate },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rate {
    /// Requests per second.
    PerSecond(f64),
    /// Percent of the rate `closed:<same connections>` reached earlier in the same run.
    PercentOfMax(f64),
}

impl Scenario {
    pub fn connections(&self) -> usize {
        match *self {
            Scenario::Closed { connections } | Scenario::Open { connections, .. } => connections,
        }
    }

    /// A file-name-safe label, e.g. `closed-1`, `open-16-at-50pct`.
    pub fn slug(&self) -> String {
        self.to_string()
            .replace(':', "-")
            .replace('@', "-at-")
            .replace('%', "pct")
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scenario::Closed { connections } => write!(f, "closed:{connections}"),
            Scenario::Open {
                connections,
                rate: Rate::PerSecond(r),
            } => write!(f, "open:{connections}@{r}"),
            Scenario::Open {
                connections,
                rate: Rate::PercentOfMax(p),
            } => write!(f, "open:{connections}@{p}%"),
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        let bad = |why: &str| {
            format!(
                "scenario `{s}`: {why}; write closed:C, open:C@RATE (requests/s) or open:C@P% (of closed:C's max)"
            )
        };
        let (mode, rest) = s.split_once(':').ok_or_else(|| bad("missing `:`"))?;
        let conns = |c: &str| -> Result<usize, String> {
            match c.parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => Ok(n),
                _ => Err(bad("connections must be a number from 1 to 4096")),
            }
        };
        match mode {
            "closed" => Ok(Scenario::Closed {
                connections: conns(rest)?,
            }),
            "open" => {
                let (c, r) = rest
                    .split_once('@')
                    .ok_or_else(|| bad("open needs @RATE"))?;
                let rate = if let Some(p) = r.strip_suffix('%') {
                    match p.parse::<f64>() {
                        Ok(p) if p > 0.0 && p <= 100.0 => Rate::PercentOfMax(p),
                        _ => return Err(bad("percent must be in (0, 100]")),
                    }
                } else {
                    match r.parse::<f64>() {
                        Ok(r) if r >= 1.0 && r.is_finite() => Rate::PerSecond(r),
                        _ => return Err(bad("rate must be ≥ 1 request/s")),
                    }
                };
                Ok(Scenario::Open {
                    connections: conns(c)?,
                    rate,
                })
            }
            _ => Err(bad("mode must be `closed` or `open`")),
        }
    }
}

/// CPU placement: which CPUs the generator, the backend and the proxy may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuPlan {
    pub generator: Vec<usize>,
    pub backend: Vec<usize>,
    pub proxy: Vec<usize>,
}

impl CpuPlan {
    /// Split: generator + backend on the first CPU, proxy on the second (or the first
    /// when there is only one). Shared: everything on the first.
    pub fn default_for(layout: Layout, nproc: usize) -> CpuPlan {
        let proxy = if layout == Layout::Split && nproc > 1 {
            1
        } else {
            0
        };
        CpuPlan {
            generator: vec![0],
            backend: vec![0],
            proxy: vec![proxy],
        }
    }

    pub fn max_cpu(&self) -> usize {
        self.generator
            .iter()
            .chain(&self.backend)
            .chain(&self.proxy)
            .copied()
            .max()
            .unwrap_or(0)
    }
}

impl FromStr for CpuPlan {
    type Err = String;
    /// `gen=0,backend=0,proxy=1` (a role may take a list: `proxy=1+2`).
    fn from_str(s: &str) -> Result<CpuPlan, String> {
        let mut plan = CpuPlan {
            generator: vec![],
            backend: vec![],
            proxy: vec![],
        };
        for part in s.split(',') {
            let (role, cpus) = part.split_once('=').ok_or_else(|| {
                format!("--cpus `{s}`: `{part}` must be ROLE=CPU[+CPU...], e.g. gen=0,backend=0,proxy=1")
            })?;
            let list = cpus
                .split('+')
                .map(|c| c.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("--cpus `{s}`: `{cpus}` is not a CPU number list"))?;
            let slot = match role.trim() {
                "gen" | "generator" => &mut plan.generator,
                "backend" => &mut plan.backend,
                "proxy" => &mut plan.proxy,
                other => {
                    return Err(format!(
                        "--cpus `{s}`: unknown role `{other}` (roles: gen, backend, proxy)"
                    ))
                }
            };
            *slot = list;
        }
        for (name, v) in [
            ("gen", &plan.generator),
            ("backend", &plan.backend),
            ("proxy", &plan.proxy),
        ] {
            if v.is_empty() {
                return Err(format!("--cpus `{s}`: no CPU given for `{name}`"));
            }
        }
        Ok(plan)
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Targets, comma-separated; each run visits them in this order (A B C A B C …).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Target::ALL)]
    pub targets: Vec<Target>,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Workload::TcpEcho)]
    pub workload: Workload,
    /// Request size in bytes (echo: both ways; http1: body size).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=65536))]
    pub size: u32,
    /// HTTP method for the http1 workload.
    #[arg(long, value_enum, default_value_t = HttpMethod::Get)]
    pub http_method: HttpMethod,
    /// Scenarios, comma-separated: closed:C, open:C@RATE or open:C@P% (P% of closed:C's
    /// throughput measured just before in the same run; list closed:C first).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "closed:1,closed:16,open:16@50%"
    )]
    pub scenarios: Vec<Scenario>,
    /// Repeats; targets are interleaved within each.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Measured time per scenario.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each scenario's measurement.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A short run of everything (1 run, 1.5 s per scenario, 0.3 s warm-up); < 60 s on 2 cores.
    #[arg(long)]
    pub quick: bool,
    /// CPU layout; `--cpus` overrides the placement it implies.
    #[arg(long, value_enum, default_value_t = Layout::Split)]
    pub layout: Layout,
    /// CPU placement, e.g. `gen=0,backend=0,proxy=1` [default: from --layout]
    #[arg(long, value_name = "PLAN")]
    pub cpus: Option<CpuPlan>,
    /// Worker threads/processes of every proxy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub proxy_workers: u32,
    /// tickmesh's idle policy [default: spin in the split layout, park in the shared one].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub tickmesh_idle: Option<TickmeshIdle>,
    /// tickmesh's spin time before waiting, with `--tickmesh-idle adaptive`.
    #[arg(long, value_name = "MICROS", default_value_t = 50)]
    pub tickmesh_spin_us: u64,
    /// tickmesh's TLS record offload backend in the TLS workloads; the run fails if
    /// tickmesh falls back to another (e.g. cryptodev in a binary without DPDK).
    #[arg(long, value_enum, value_name = "BACKEND", default_value_t = TickmeshOffload::Software)]
    pub tickmesh_offload: TickmeshOffload,
    /// Write report.json, report.md and the latency plots (SVG, PNG) here.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Use fixed ports from here (backend on PORT, proxy on PORT+1, tls-echo's TLS echo
    /// backend on PORT+2) instead of free ones.
    #[arg(long, value_name = "PORT")]
    pub base_port: Option<u16>,
    /// The tickmesh binary for the tickmesh targets and the floor relay [default: next to this executable]
    #[arg(long, value_name = "FILE")]
    pub tickmesh_bin: Option<PathBuf>,
    /// Give up on one request after this long (counted as an error).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Internal: run the floor relay (`PROTO LISTEN UPSTREAM IDLE`); the harness spawns this.
    #[arg(long, hide = true, value_name = "SPEC")]
    pub internal_floor: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (write e.g. 500ms, 10s)"))
}

/// Settings after `--quick` and defaults are applied.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub targets: Vec<Target>,
    pub workload: Workload,
    pub size: usize,
    pub http_method: HttpMethod,
    pub scenarios: Vec<Scenario>,
    pub runs: u32,
    #[serde(with = "secs")]
    pub duration: Duration,
    #[serde(with = "secs")]
    pub warmup: Duration,
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    pub layout: Layout,
    pub cpus: CpuPlan,
    pub proxy_workers: u32,
    /// tickmesh's `--idle` (resolved from the layout when not given).
    pub tickmesh_idle: TickmeshIdle,
    pub tickmesh_spin_us: u64,
    pub tickmesh_offload: TickmeshOffload,
    pub quick: bool,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Settings {
    pub fn resolve(a: &BenchArgs, nproc: usize) -> Result<Settings, String> {
        let (runs, duration, warmup) = if a.quick {
            (1, Duration::from_millis(1500), Duration::from_millis(300))
        } else {
            (a.runs, a.duration, a.warmup)
        };
        if duration < Duration::from_millis(100) {
            return Err(format!(
                "--duration {} is too short to measure anything; use at least 100ms",
                humantime::format_duration(duration)
            ));
        }
        let mut targets = Vec::new();
        for t in &a.targets {
            if !targets.contains(t) {
                targets.push(*t);
            }
        }
        if targets.is_empty() {
            return Err("--targets is empty".into());
        }
        if a.scenarios.is_empty() {
            return Err("--scenarios is empty".into());
        }
        for (i, s) in a.scenarios.iter().enumerate() {
            if let Scenario::Open {
                connections,
                rate: Rate::PercentOfMax(_),
            } = s
            {
                let has_closed = a.scenarios[..i].iter().any(|p| {
                    *p == Scenario::Closed {
                        connections: *connections,
                    }
                });
                if !has_closed {
                    return Err(format!(
                        "scenario `{s}` is a percent of closed:{connections}'s rate: list closed:{connections} before it"
                    ));
                }
            }
        }
        let cpus = a
            .cpus
            .clone()
            .unwrap_or_else(|| CpuPlan::default_for(a.layout, nproc));
        if cpus.max_cpu() >= nproc {
            return Err(format!(
                "--cpus names CPU {} but this machine has {nproc} (0..{})",
                cpus.max_cpu(),
                nproc - 1
            ));
        }
        Ok(Settings {
            targets,
            workload: a.workload,
            size: a.size as usize,
            http_method: a.http_method,
            scenarios: a.scenarios.clone(),
            runs,
            duration,
            warmup,
            request_timeout: a.request_timeout,
            layout: a.layout,
            cpus,
            proxy_workers: a.proxy_workers,
            tickmesh_idle: a.tickmesh_idle.unwrap_or(match a.layout {
                Layout::Split => TickmeshIdle::Spin,
                Layout::Shared => TickmeshIdle::Park,
            }),
            tickmesh_spin_us: a.tickmesh_spin_us,
            tickmesh_offload: a.tickmesh_offload,
            quick: a.quick,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_and_print_back() {
        for s in ["closed:1", "closed:16", "open:16@50%", "open:4@20000"] {
            let sc: Scenario = s.parse().unwrap();
            assert_eq!(sc.to_string(), s);
        }
        assert_eq!(
            "open:16@50%".parse::<Scenario>().unwrap().slug(),
            "open-16-at-50pct"
        );
    }

    #[test]
    fn malformed_scenarios_are_refused_with_the_syntax() {
        for bad in [
            "",
            "closed",
            "closed:0",
            "closed:x",
            "open:16",
            "open:16@0%",
            "open:16@150%",
            "open:16@-3",
            "burst:3",
            "open:0@10",
        ] {
            let e = bad.parse::<Scenario>().unwrap_err();
            assert!(e.contains("closed:C"), "{bad}: {e}");
        }
    }

    #[test]
    fn cpu_plans_parse_and_refuse_nonsense() {
        let p: CpuPlan = "gen=0,backend=0,proxy=1+2".parse().unwrap();
        assert_eq!(p.proxy, vec![1, 2]);
        assert_eq!(p.max_cpu(), 2);
        assert!("gen=0,backend=0"
            .parse::<CpuPlan>()
            .unwrap_err()
            .contains("proxy"));
        assert!("gen=0,backend=0,proxy=x"
            .parse::<CpuPlan>()
            .unwrap_err()
            .contains("not a CPU"));
        assert!("gpu=0"
            .parse::<CpuPlan>()
            .unwrap_err()
            .contains("unknown role"));
        assert_eq!(
            CpuPlan::default_for(Layout::Shared, 2),
            "gen=0,backend=0,proxy=0".parse().unwrap()
        );
    }

    #[test]
    fn tls_echo_parses_with_its_size_and_bad_spellings_list_it() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct T {
            #[command(flatten)]
            a: BenchArgs,
        }
        let a = T::parse_from(["t", "--workload", "tls-echo", "--size", "1024"]).a;
        let s = Settings::resolve(&a, 2).unwrap();
        assert_eq!(s.workload, Workload::TlsEcho);
        assert!(s.workload.is_tls() && s.workload.is_echo() && !s.workload.is_udp());
        assert_eq!(s.size, 1024);
        assert_eq!(
            serde_json::to_value(s.workload).unwrap(),
            serde_json::json!("tls-echo")
        );
        assert_eq!(Workload::TlsEcho.name(), "tls-echo");
        for bad in [
            &["t", "--workload", "tls"][..],
            &["t", "--workload", "TLS-ECHO-1.3"],
            &["t", "--workload", "tls-echo", "--size", "4"],
            &["t", "--workload", "tls-echo", "--size", "100000"],
        ] {
            let e = T::try_parse_from(bad).unwrap_err().to_string();
            let named = e.contains("tls-echo") || e.contains("8..=65536");
            assert!(named, "{bad:?}: {e}");
        }
        assert!(!Workload::TcpEcho.is_tls() && !Workload::Http1.is_echo());
    }

    #[test]
    fn percent_scenarios_need_their_closed_loop_first() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: BenchArgs,
        }
        let a = T::parse_from(["t", "--scenarios", "open:16@50%,closed:16"]).a;
        assert!(Settings::resolve(&a, 2).unwrap_err().contains("before it"));
        let a = T::parse_from(["t", "--cpus", "gen=0,backend=0,proxy=7"]).a;
        assert!(Settings::resolve(&a, 2).unwrap_err().contains("CPU 7"));
        let a = T::parse_from(["t", "--quick", "--targets", "direct,direct,floor"]).a;
        let s = Settings::resolve(&a, 2).unwrap();
        assert_eq!(s.targets, vec![Target::Direct, Target::Floor]);
        assert_eq!(s.runs, 1);
        assert!(T::try_parse_from(["t", "--targets", "envoy"]).is_err());
        assert!(T::try_parse_from(["t", "--workload", "grpc"]).is_err());
    }
}
