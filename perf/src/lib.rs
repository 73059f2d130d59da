//! tickmesh-perf: the benchmark harness behind `tickmesh bench`.
//!
//! One run measures the same workload through every target — `direct` (no proxy),
//! `floor` (a minimal epoll relay), tickmesh's engines, HAProxy, nginx — against one
//! backend, with targets interleaved across repeats (A B C A B C …) so drift hits all
//! alike. Modules: `args` (what to run), `loadgen` (closed/open-loop generator), `hist`
//! (latency arithmetic), `wire` (request/response bytes), `backend`, `floor`, `peers`
//! (proxies: configs, start, stop), `sys` (`/proc`, affinity), `report`, `plot`.
//!
//! Never lets one target's failure hide the others: a peer that fails to start or dies is
//! recorded with its reason and the bench goes on. `#![forbid(unsafe_code)]`: every OS
//! call goes through `nix`/`std`.

#![forbid(unsafe_code)]

pub mod args;
pub mod backend;
pub mod busy;
pub mod floor;
pub mod handshake;
pub mod hist;
pub mod loadgen;
pub mod peers;
pub mod plot;
pub mod report;
pub mod sys;
pub mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

pub use args::BenchArgs;
use args::{Rate, Scenario, Settings, Target};
use loadgen::{LoadSpec, Mode};
use report::{Failure, Report, RunRecord, ScenarioReport, TargetResult};

/// `tickmesh bench`: run, print the table, write the report if `--out` was given.
/// Fails only on bad input or when nothing could be measured at all.
pub fn run(a: &BenchArgs, tickmesh_version: &str) -> anyhow::Result<()> {
    if let Some(spec) = &a.internal_floor {
        let spec = floor::FloorSpec::parse(spec)?;
        return floor::serve(&spec, &std::sync::atomic::AtomicBool::new(false));
    }
    let settings = Settings::resolve(a, sys::nproc()).map_err(anyhow::Error::msg)?;
    let report = bench(&settings, a, tickmesh_version)?;
    print!("{}", report::table(&report));
    if let Some(dir) = &a.out {
        write_report(&report, dir)?;
        println!("\nreport written to {}", dir.display());
    }
    let measured = report
        .scenarios
        .iter()
        .flat_map(|s| &s.targets)
        .any(|t| t.clean_runs > 0);
    if !measured {
        anyhow::bail!("no target produced a clean measurement (see the problems above)");
    }
    Ok(())
}

/// Everything about one (scenario, target): its runs and their merged histogram.
struct Cell {
    runs: Vec<RunRecord>,
    merged: Histogram<u64>,
}

/// Run the whole bench and build the report (no output files).
pub fn bench(s: &Settings, a: &BenchArgs, tickmesh_version: &str) -> anyhow::Result<Report> {
    let machine = sys::machine();
    let [load1, ..] = machine.load_average;
    if load1 > machine.nproc as f64 * 0.5 {
        eprintln!(
            "warning: the machine is busy (load average {load1:.1} on {} CPUs): other work will show in the numbers; the report records it",
            machine.nproc
        );
    }
    // The harness's own threads (progress, spawning) live on the generator's CPUs, off
    // the proxy's.
    sys::pin_current_thread(&s.cpus.generator)?;
    let tmp = tempfile::Builder::new()
        .prefix("tickmesh-bench-")
        .tempdir()
        .context("creating a scratch folder")?;
    let backend_addr: SocketAddr = match a.base_port {
        Some(p) => SocketAddr::from(([127, 0, 0, 1], p)),
        None => "127.0.0.1:0".parse().expect("literal address"),
    };
    let backend = backend::Backend::start(s.workload, s.size, backend_addr, &s.cpus.backend)?;
    // tls-echo: a second backend terminates TLS itself (direct's target, the floor's
    // upstream); the proxies terminate and relay plaintext to the first.
    let (tls_env, tls_backend) = if s.workload.is_tls() {
        let certs = tls::Certs::generate(&tmp.path().join("certs"))?;
        let addr = match a.base_port {
            Some(p) => SocketAddr::from(([127, 0, 0, 1], p.wrapping_add(2))),
            None => "127.0.0.1:0".parse().expect("literal address"),
        };
        let server = certs.server_config()?;
        // Echo for tls-echo, HTTP for https1.
        let b =
            backend::Backend::start_with_tls(s.workload, s.size, addr, &s.cpus.backend, server)?;
        let env = peers::TlsEnv {
            client: certs.client_config()?,
            certs,
            backend: b.addr,
        };
        (Some(env), Some(b))
    } else {
        (None, None)
    };
    // tls-handshake: the generator's client skips verification and resumption (see
    // `Certs::handshake_client_config`); readiness probes keep the verifying one.
    let client_tls = match &tls_env {
        Some(t) if s.workload == args::Workload::TlsHandshake => {
            Some(t.certs.handshake_client_config()?)
        }
        t => t.as_ref().map(|t| t.client.clone()),
    };
    let env = peers::PeerEnv {
        settings: s,
        backend: backend.addr,
        fixed_port: a.base_port.map(|p| p.wrapping_add(1)),
        tickmesh_bin: a.tickmesh_bin.clone(),
        dir: tmp.path(),
        tls: tls_env,
    };
    let mut infos: BTreeMap<String, peers::PeerInfo> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut cells: HashMap<(usize, Target), Cell> = HashMap::new();
    let steps = s.runs as u64 * s.targets.len() as u64 * s.scenarios.len() as u64;
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} {msg}")
            .expect("constant template")
            .progress_chars("=> "),
    );
    // Generator on its own thread on the generator's CPUs; it yields when it shares them.
    let gen_shares_cpu = s
        .cpus
        .generator
        .iter()
        .any(|c| s.cpus.backend.contains(c) || s.cpus.proxy.contains(c));

    for run in 0..s.runs {
        for &target in &s.targets {
            bar.set_message(format!("run {}/{} {target}: starting", run + 1, s.runs));
            let mut peer = match peers::start(target, &env) {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("{e:#}");
                    note(&bar, format!("✗ {target} (run {}): {msg}", run + 1));
                    for (i, _) in s.scenarios.iter().enumerate() {
                        cell(&mut cells, i, target)
                            .runs
                            .push(RunRecord::failed(run, msg.clone()));
                    }
                    failures.push(Failure {
                        target,
                        run,
                        scenario: None,
                        error: msg,
                    });
                    bar.inc(s.scenarios.len() as u64);
                    continue;
                }
            };
            infos.entry(target.name().into()).or_insert_with(|| {
                let mut info = peer.info.clone();
                info.version = peer_version(target, info.binary.as_deref(), tickmesh_version);
                info
            });
            let mut closed_rate: HashMap<usize, f64> = HashMap::new();
            for (i, sc) in s.scenarios.iter().enumerate() {
                bar.set_message(format!("run {}/{} {target} {sc}", run + 1, s.runs));
                let rec = measure(
                    s,
                    &mut peer,
                    sc,
                    run,
                    &closed_rate,
                    gen_shares_cpu,
                    client_tls.as_ref(),
                    &bar,
                );
                let (rec, hist) = match rec {
                    Ok(v) => v,
                    Err(e) => (RunRecord::failed(run, format!("{e:#}")), None),
                };
                if let Scenario::Closed { connections } = sc {
                    if rec.clean {
                        closed_rate.insert(*connections, rec.throughput_rps);
                    }
                }
                if let Some(err) = rec.error.clone().or_else(|| {
                    (rec.errors_total > 0)
                        .then(|| format!("{} request(s) failed", rec.errors_total))
                }) {
                    note(&bar, format!("✗ {target} {sc} (run {}): {err}", run + 1));
                    failures.push(Failure {
                        target,
                        run,
                        scenario: Some(sc.to_string()),
                        error: err,
                    });
                }
                let c = cell(&mut cells, i, target);
                if let (true, Some(h)) = (rec.clean, hist) {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = c.merged.add(&h);
                }
                c.runs.push(rec);
                bar.inc(1);
            }
            peer.stop();
        }
    }
    bar.finish_and_clear();
    drop(backend);
    drop(tls_backend);

    let mut scenarios = Vec::new();
    for (i, sc) in s.scenarios.iter().enumerate() {
        let mut targets: Vec<TargetResult> = s
            .targets
            .iter()
            .map(|&t| {
                let (runs, merged) = cells
                    .get(&(i, t))
                    .map(|c| (c.runs.clone(), hist::Summary::of(&c.merged).distribution))
                    .unwrap_or_default();
                let mut r = TargetResult::new(t, runs);
                r.merged_distribution = merged;
                r
            })
            .collect();
        report::relate(&mut targets);
        scenarios.push(ScenarioReport {
            scenario: sc.to_string(),
            spec: *sc,
            targets,
        });
    }
    Ok(Report {
        schema: report::SCHEMA,
        generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        tickmesh_version: tickmesh_version.to_owned(),
        machine,
        settings: s.clone(),
        peers: infos,
        scenarios,
        failures,
    })
}

/// A problem, as it happens: above the progress bar, or on stderr when there is none
/// (not a terminal).
fn note(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        eprintln!("{msg}");
    } else {
        bar.println(msg);
    }
}

fn cell(cells: &mut HashMap<(usize, Target), Cell>, i: usize, t: Target) -> &mut Cell {
    cells.entry((i, t)).or_insert_with(|| Cell {
        runs: Vec::new(),
        merged: hist::new_histogram(),
    })
}

fn peer_version(target: Target, binary: Option<&str>, tickmesh_version: &str) -> Option<String> {
    match target {
        Target::Direct => None,
        Target::Floor => Some(format!(
            "tickmesh-perf floor relay (tickmesh {tickmesh_version})"
        )),
        Target::TickmeshUring | Target::TickmeshEpoll => {
            binary.and_then(|b| peers::version_of(Path::new(b), &["--version"]))
        }
        Target::Haproxy => binary.and_then(|b| peers::version_of(Path::new(b), &["-v"])),
        Target::Nginx => binary.and_then(|b| peers::version_of(Path::new(b), &["-v"])),
    }
}

/// One scenario against a started peer.
#[allow(clippy::too_many_arguments)]
fn measure(
    s: &Settings,
    peer: &mut peers::Peer,
    sc: &Scenario,
    run: u32,
    closed_rate: &HashMap<usize, f64>,
    gen_shares_cpu: bool,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    bar: &ProgressBar,
) -> anyhow::Result<(RunRecord, Option<Histogram<u64>>)> {
    let (mode, offered) = match *sc {
        Scenario::Closed { .. } => (Mode::Closed, None),
        Scenario::Open { connections, rate } => {
            let r = match rate {
                Rate::PerSecond(r) => r,
                Rate::PercentOfMax(p) => {
                    let max = closed_rate.get(&connections).copied().ok_or_else(|| {
                        anyhow::anyhow!("{sc} needs closed:{connections}'s rate from this run, which did not complete cleanly")
                    })?;
                    (max * p / 100.0).max(1.0)
                }
            };
            (Mode::Open { rate: r }, Some(r))
        }
    };
    let spec = LoadSpec {
        workload: s.workload,
        size: s.size,
        method: s.http_method,
        target: peer.listen,
        connections: sc.connections(),
        mode,
        warmup: s.warmup,
        duration: s.duration,
        timeout: s.request_timeout,
        yield_when_idle: gen_shares_cpu,
        tls: tls.cloned(),
    };
    let pids = peer.pids();
    let gen_cpus = s.cpus.generator.clone();
    // CPU is read around the measured window only: the generator reports when warm-up
    // ends through this channel.
    let cpu_start = sys::cpu_ns(&pids);
    let load_cpu_start = sys::self_cpu_ns();
    let mut busy = peer.busy.clone().map(busy::BusyWatch::start);
    let result = std::thread::scope(|scope| {
        let h = scope.spawn(move || {
            sys::pin_current_thread(&gen_cpus)?;
            if spec.workload == args::Workload::TlsHandshake {
                handshake::run(&spec)
            } else {
                loadgen::run(&spec)
            }
        });
        while !h.is_finished() {
            bar.tick();
            if let Some(b) = busy.as_mut() {
                b.tick();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        h.join()
            .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
    });
    let cpu_end = sys::cpu_ns(&pids);
    let load_cpu = sys::self_cpu_ns().saturating_sub(load_cpu_start);
    // CPU over warm-up + window + drain (what the generator ran), and that ÷ wall time.
    let elapsed = s.warmup + s.duration;
    let cpu = (!pids.is_empty()).then(|| cpu_end.saturating_sub(cpu_start) as f64 / 1e9);
    let util = cpu.map(|c| c / elapsed.as_secs_f64());
    let busy_end = busy.as_mut().map(|b| (b.finish(util), b.note.take()));
    let mem = (!pids.is_empty()).then(|| sys::memory_kib(&pids));
    let alive = peer.check_alive();
    let r = result?;
    let errors_total = r.errors.total();
    let accounted = r.sent == r.received + errors_total;
    let mut error = r.first_error.clone().filter(|_| errors_total > 0);
    if let Err(e) = alive {
        error = Some(format!("{e:#}"));
    }
    if !accounted {
        error.get_or_insert_with(|| {
            format!(
                "accounting mismatch: sent {} ≠ received {} + errors {}",
                r.sent, r.received, errors_total
            )
        });
    }
    let latency = hist::Summary::of(&r.hist);
    // The CPU is charged to the requests of the whole time the generator ran:
    // approximated by scaling the window's requests by elapsed/window.
    let per_1k = cpu.and_then(|cpu| {
        let reqs_all = r.received as f64 * elapsed.as_secs_f64() / r.window.as_secs_f64();
        (reqs_all > 0.0).then(|| cpu / reqs_all * 1000.0)
    });
    let rec = RunRecord {
        run,
        clean: error.is_none() && errors_total == 0 && accounted && r.received > 0,
        error: error.or_else(|| (r.received == 0).then(|| "no request completed".to_string())),
        offered_rps: offered,
        sent: r.sent,
        received: r.received,
        errors: r.errors.clone(),
        errors_total,
        reconnects: r.reconnects,
        stale_replies: r.stale_replies,
        window_s: r.window.as_secs_f64(),
        throughput_rps: hist::rate(r.received, r.window),
        latency,
        proxy_cpu_s: cpu,
        cpu_s_per_1k_requests: per_1k,
        cpu_utilization: util,
        load_cpu_utilization: Some(load_cpu as f64 / 1e9 / elapsed.as_secs_f64()),
        proxy_busy_cores: busy_end.as_ref().and_then(|b| b.0),
        busy_note: busy_end.and_then(|b| b.1),
        rss_kib: mem.map(|m| m.0),
        hwm_kib: mem.map(|m| m.1),
        generator_lag_ns: (!r.generator_lag.is_empty()).then(|| report::Lag {
            p50: r.generator_lag.value_at_quantile(0.5),
            p99: r.generator_lag.value_at_quantile(0.99),
            max: r.generator_lag.max(),
        }),
    };
    if let Some(l) = &rec.generator_lag_ns {
        if l.p99 > 100_000 {
            note(
                bar,
                format!(
                    "! {} {sc}: the generator itself sent late (p99 {} µs behind schedule): the machine is too busy for this rate; latencies include that delay",
                    peer.target,
                    l.p99 / 1000
                ),
            );
        }
    }
    Ok((rec, Some(r.hist)))
}

/// Write report.json, report.md and one latency plot (SVG + PNG) per scenario.
pub fn write_report(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.md"), report::markdown(r))?;
    for sc in &r.scenarios {
        let curves: Vec<plot::Curve> = sc
            .targets
            .iter()
            .filter(|t| !t.merged_distribution.is_empty())
            .map(|t| plot::Curve {
                label: t.target.to_string(),
                points: &t.merged_distribution,
            })
            .collect();
        let title = format!(
            "{} {} B, {} — latency by percentile",
            r.settings.workload.name(),
            r.settings.size,
            sc.scenario
        );
        plot::write(
            &dir.join(format!("latency-{}", sc.spec.slug())),
            &title,
            &curves,
        )?;
    }
    Ok(())
}
