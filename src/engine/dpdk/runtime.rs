//! `tickmesh run --engine dpdk`: the EAL, the ports and one poll loop per worker lcore.
//!
//! Owns start-up order (EAL → pools → ports → workers), the worker loop (RX burst of 32
//! with prefetch → balancer verdict → TX burst on the same queue, exception frames to the
//! kernel port) and the clean shutdown (workers joined → ports stopped and closed → pools
//! freed → `rte_eal_cleanup`). Workers never lock, allocate or make a syscall per packet:
//! they read the published [`LbTable`] once per loop through `arc-swap`.
//!
//! Live updates: the control plane (or SIGHUP, which re-reads `--config`) compiles a new
//! table and swaps it in with [`DpdkEngine::apply`]; flows keep their backends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use dpdk_sys as sys;

use super::eal::{eal_args, Eal};
use super::lb::{LbAddressing, LbTable, LbWorker, PortCtx, Verdict};
use super::port::{port_socket, probed_ports, Burst, Mempool, Port, BURST};
use crate::config::{self, Config, Format};
use crate::engine::{EngineOptions, Idle};
use crate::telemetry::{PortCounter as C, PortStats, StatsRegistry};

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}
extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

/// The running DPDK engine. Field order is drop order: ports close before pools free,
/// and both before the EAL is cleaned up.
pub struct DpdkEngine {
    pub tables: Arc<ArcSwap<LbTable>>,
    pub stats: Arc<StatsRegistry>,
    pub addressing: LbAddressing,
    generation: AtomicU32,
    ports: Vec<Port>,
    _pools: Vec<Mempool>,
    _eal: Eal,
}

struct WorkerCtx {
    worker: usize,
    data: Vec<(u16, [u8; 6], Arc<PortStats>)>,
    /// Exception port id and counters; worker 0 also polls its RX queue 0.
    exception: Option<(u16, Arc<PortStats>)>,
    tables: Arc<ArcSwap<LbTable>>,
    flows: usize,
    idle: Idle,
    spin: Duration,
}

impl DpdkEngine {
    /// Compile and publish a new config (control plane, SIGHUP).
    pub fn apply(&self, cfg: &Config) -> Result<(), config::ConfigError> {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let t = LbTable::compile(cfg, &self.addressing, u64::from(g), &self.stats)?;
        self.tables.store(Arc::new(t));
        self.stats.prune();
        Ok(())
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let (text, format) = match path {
        Some(p) => crate::cli::read_config_file(p)?,
        None => (config::DEFAULT_CONFIG.to_string(), Format::Yaml),
    };
    config::parse(&text, format).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid config:\n{e}",
            path.map_or("the default config".into(), |p| p.display().to_string())
        )
    })
}

/// Run until SIGINT/SIGTERM; then print the counters as JSON on stdout.
pub fn run(args: &crate::cli::RunArgs) -> anyhow::Result<()> {
    let opts = EngineOptions::from_args(&args.engine);
    let d = &args.dpdk;
    let addressing = d.addressing()?;
    let cfg = load_config(args.config.as_ref())?;
    let workers = opts.workers;
    let stats = Arc::new(StatsRegistry::new(workers));
    let table = LbTable::compile(&cfg, &addressing, 1, &stats)
        .map_err(|e| anyhow::anyhow!("the config cannot run on the DPDK engine:\n{e}"))?;

    // The config's kernel-side NIC profile (host settings, kernel interfaces), applied
    // before the EAL starts and watched for drift, as `tickmesh run` does.
    let _nic_watch = cfg
        .nic
        .as_ref()
        .map(crate::daemon::NicWatch::start)
        .transpose()
        .context("the config's nic profile")?;

    let prefix = d
        .dpdk_file_prefix
        .clone()
        .unwrap_or_else(|| format!("tickmesh-{}", std::process::id()));
    let eal = Eal::init(eal_args(d, workers, &prefix), d.dpdk_no_huge)?;
    // SAFETY: EAL is running; plain query.
    let lcores = unsafe { sys::rte_lcore_count() } as usize;
    if lcores != workers {
        bail!("{workers} workers need {workers} lcores but the EAL has {lcores}: make --dpdk-lcores list exactly one lcore per worker (or set --workers)");
    }
    let probed = probed_ports();
    if probed.is_empty() {
        bail!("DPDK found no Ethernet ports: give virtual devices with --dpdk-vdev (e.g. net_tap0,iface=dtap0) or bind a NIC to vfio-pci and name it with --dpdk-allow");
    }
    let exc_name = d.dpdk_exception_port.as_deref();
    if let Some(n) = exc_name {
        if !probed.iter().any(|(_, p)| p == n) {
            bail!(
                "--dpdk-exception-port {n}: no such port (ports: {})",
                probed
                    .iter()
                    .map(|p| p.1.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }

    // One pool per NUMA socket that has a port, sized for every queue ring plus bursts.
    let mut pools: Vec<Mempool> = Vec::new();
    let per_port = (1024 + 1024 + 2 * BURST) * workers + 512;
    for (id, _) in &probed {
        let s = port_socket(*id);
        if !pools.iter().any(|p| p.socket == s) {
            let n = (per_port * probed.len()).next_power_of_two() as u32 - 1;
            pools.push(Mempool::new(&format!("tm_mbuf_s{s}"), n.max(8191), s)?);
        }
    }
    let mut ports = Vec::new();
    for (id, name) in &probed {
        let pool = pools
            .iter()
            .find(|p| p.socket == port_socket(*id))
            .expect("a pool was made for every port's socket above");
        let is_exc = Some(name.as_str()) == exc_name;
        let rxq = if is_exc { 1 } else { workers as u16 };
        ports.push(Port::start(*id, name, rxq, workers as u16, pool)?);
        let p = ports.last().expect("just pushed");
        tracing::info!(
            "dpdk port {} `{}` mac {} socket {} rx queues {} tx queues {}{}",
            p.id,
            p.name,
            mac_str(&p.mac),
            p.socket,
            p.rx_queues,
            p.tx_queues,
            if is_exc {
                " (exception path to the kernel)"
            } else {
                ""
            }
        );
    }
    if ports.iter().all(|p| Some(p.name.as_str()) == exc_name) {
        bail!("every DPDK port is the exception port: add a data port with --dpdk-vdev or --dpdk-allow");
    }

    let engine = DpdkEngine {
        tables: Arc::new(ArcSwap::from_pointee(table)),
        stats: stats.clone(),
        addressing,
        generation: AtomicU32::new(1),
        ports,
        _pools: pools,
        _eal: eal,
    };
    for v in engine.tables.load().vips.iter() {
        tracing::info!("dpdk vip `{}` {} {:?}", v.name, v.addr, v.forwarding);
    }

    // SAFETY: installing async-signal-safe handlers (they only store an atomic).
    unsafe {
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_hup as *const () as libc::sighandler_t);
    }

    let ctxs: Vec<WorkerCtx> = (0..workers)
        .map(|w| WorkerCtx {
            worker: w,
            data: engine
                .ports
                .iter()
                .filter(|p| Some(p.name.as_str()) != exc_name)
                .map(|p| (p.id, p.mac, stats.port(&p.name)))
                .collect(),
            exception: engine
                .ports
                .iter()
                .find(|p| Some(p.name.as_str()) == exc_name)
                .map(|p| (p.id, stats.port(&p.name))),
            tables: engine.tables.clone(),
            flows: d.dpdk_flows,
            idle: opts.idle,
            spin: opts.spin,
        })
        .collect();

    // Control thread (not an lcore): SIGHUP reloads --config; never touches DPDK.
    let config_path = args.config.clone();
    let engine = Arc::new(engine);
    let ctl = {
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("tm-dpdk-ctl".into())
            .spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    if RELOAD.swap(false, Ordering::SeqCst) {
                        match load_config(config_path.as_ref())
                            .and_then(|c| engine.apply(&c).map_err(|e| anyhow::anyhow!("{e}")))
                        {
                            Ok(()) => tracing::info!("dpdk: config reloaded"),
                            Err(e) => tracing::error!(
                                "dpdk: reload rejected, keeping the running config: {e:#}"
                            ),
                        }
                    }
                }
            })
            .context("spawning the control thread")?
    };

    // Port control for `tickmesh nic ... dpdk:PORT`, on its own thread (never an lcore).
    let portctl = super::portctl::serve_engine(
        &engine.ports,
        &engine._pools,
        workers,
        d.dpdk_nic_socket.clone(),
        &STOP,
    );

    if let Some(n) = d.dpdk_bench_prime {
        prime(&engine, n)?;
    }
    let started = std::time::Instant::now();

    // Worker 0 runs on the main lcore; the others on the EAL's worker lcores.
    let mut ctxs = ctxs.into_iter();
    let main_ctx = ctxs.next().expect("workers >= 1");
    let mut launched = Vec::new();
    // SAFETY: iterating EAL lcores from the main lcore.
    let mut lcore = unsafe { sys::rte_get_next_lcore(u32::MAX, 1, 0) };
    for ctx in ctxs {
        let arg = Box::into_raw(Box::new(ctx));
        // SAFETY: `arg` is a leaked Box reclaimed exactly once by `lcore_entry`; the lcore
        // is an EAL worker in WAIT state (fresh EAL).
        let rc = unsafe { sys::rte_eal_remote_launch(Some(lcore_entry), arg.cast(), lcore) };
        if rc != 0 {
            // SAFETY: the launch failed, so the Box was not taken.
            drop(unsafe { Box::from_raw(arg) });
            STOP.store(true, Ordering::SeqCst);
            bail!(
                "cannot launch a worker on lcore {lcore}: {}",
                super::eal::strerror(-rc)
            );
        }
        launched.push(lcore);
        // SAFETY: as above.
        lcore = unsafe { sys::rte_get_next_lcore(lcore, 1, 0) };
    }
    tracing::info!(
        "dpdk engine running: {workers} worker(s); SIGHUP reloads the config, SIGTERM stops"
    );
    worker_loop(&main_ctx);
    for l in launched {
        // SAFETY: main lcore waits for the workers it launched.
        unsafe { sys::rte_eal_wait_lcore(l) };
    }
    let _ = ctl.join();
    // The port-control thread destroys its rte_flow rules before the ports close (on an
    // early return the guard does the same when it drops, before `engine`).
    drop(portctl);
    drop(main_ctx);

    let report = report(&engine, started.elapsed());
    println!("{report}");
    // Drop order: ports (stop, close), pools, then EAL cleanup.
    match Arc::try_unwrap(engine) {
        Ok(e) => drop(e),
        Err(_) => tracing::warn!("dpdk engine still referenced at exit; skipping cleanup"),
    }
    Ok(())
}

unsafe extern "C" fn lcore_entry(arg: *mut std::os::raw::c_void) -> std::os::raw::c_int {
    // SAFETY: `arg` is the Box leaked for this lcore by `run`, reclaimed only here.
    let ctx = unsafe { Box::from_raw(arg.cast::<WorkerCtx>()) };
    worker_loop(&ctx);
    0
}

fn now_ms(hz: u64) -> u64 {
    // SAFETY: reading the TSC has no preconditions.
    let c = unsafe { sys::tm_get_tsc_cycles() };
    c / (hz / 1000).max(1)
}

/// How many frames ahead of the one being processed the loop prefetches.
const PREFETCH: usize = 4;

fn worker_loop(ctx: &WorkerCtx) {
    let w = ctx.worker;
    let q = w as u16;
    let mut lb = LbWorker::new(w, ctx.flows);
    let mut rx = Burst::default();
    let mut fwd = Burst::default();
    let mut exc = Burst::default();
    // SAFETY: plain query once the EAL runs.
    let hz = unsafe { sys::rte_get_tsc_hz() };
    let spin_ms = ctx.spin.as_millis() as u64;
    let mut last_work = now_ms(hz);
    while !STOP.load(Ordering::Relaxed) {
        // `tickmesh nic set dpdk:PORT rings|...` parks workers while it stops the port.
        if super::portctl::PAUSE.load(Ordering::Relaxed) {
            super::portctl::park();
            continue;
        }
        let table = ctx.tables.load();
        let now = now_ms(hz);
        let mut work = 0usize;
        for (port, mac, stats) in &ctx.data {
            let n = rx.rx(*port, q);
            if n == 0 {
                continue;
            }
            work += n;
            let pctx = PortCtx { mac: *mac, stats };
            let mut bytes = 0u64;
            for i in 0..PREFETCH.min(n) {
                rx.prefetch(i);
            }
            for i in 0..n {
                rx.prefetch(i + PREFETCH);
                let mut m = rx.take(i);
                bytes += m.len() as u64;
                match lb.process(&table, &pctx, &mut m, now) {
                    Verdict::Forward => fwd.push(m),
                    Verdict::Exception if ctx.exception.is_some() => exc.push(m),
                    Verdict::Exception | Verdict::Drop => drop(m),
                }
            }
            rx.reset();
            stats.add(w, C::RxPackets, n as u64);
            stats.add(w, C::RxBytes, bytes);
            let (sent, sent_bytes, dropped) = fwd.tx(*port, q);
            stats.add(w, C::TxPackets, sent);
            stats.add(w, C::TxBytes, sent_bytes);
            stats.add(w, C::DropTxFull, dropped);
            if let Some((ep, _)) = &ctx.exception {
                let (_, _, dropped) = exc.tx(*ep, q);
                stats.add(w, C::DropTxFull, dropped);
            }
        }
        // The kernel's side of the exception path goes out of the first data port.
        if w == 0 {
            if let (Some((ep, estats)), Some((dp, _, dstats))) = (&ctx.exception, ctx.data.first())
            {
                let n = rx.rx(*ep, 0);
                if n > 0 {
                    work += n;
                    for i in 0..n {
                        fwd.push(rx.take(i));
                    }
                    rx.reset();
                    estats.add(w, C::RxPackets, n as u64);
                    dstats.add(w, C::FromException, n as u64);
                    let (sent, bytes, dropped) = fwd.tx(*dp, q);
                    dstats.add(w, C::TxPackets, sent);
                    dstats.add(w, C::TxBytes, bytes);
                    dstats.add(w, C::DropTxFull, dropped);
                }
            }
        }
        if work > 0 {
            last_work = now;
            continue;
        }
        // PMDs have no kernel wait without RX interrupts: "waiting" is a short sleep.
        match ctx.idle {
            Idle::Spin => std::hint::spin_loop(),
            Idle::Adaptive if now.saturating_sub(last_work) < spin_ms.max(1) => {
                std::hint::spin_loop()
            }
            _ => std::thread::sleep(Duration::from_micros(100)),
        }
    }
}

/// Benchmark priming: `n` distinct TCP flows to the first VIP, sent once out of every
/// data port. On a loopback device they come back and circulate through the balancer.
fn prime(e: &DpdkEngine, n: usize) -> anyhow::Result<()> {
    let table = e.tables.load();
    let Some(vip) = table.vips.first() else {
        bail!("--dpdk-bench-prime needs a listener (VIP) in the config");
    };
    let proto = vip.protocol;
    for p in &e.ports {
        let pool = e
            ._pools
            .iter()
            .find(|m| m.socket == p.socket)
            .expect("every port has a pool");
        let mut sent = 0;
        while sent < n {
            let mut burst = Burst::default();
            while !burst.is_full() && sent < n {
                let f = bench_frame(p.mac, proto, sent as u32, *vip.addr.ip(), vip.addr.port());
                let m = pool
                    .alloc_frame(&f)
                    .ok_or_else(|| anyhow::anyhow!("mbuf pool exhausted while priming"))?;
                burst.push(m);
                sent += 1;
            }
            let (_, _, dropped) = burst.tx(p.id, 0);
            if dropped > 0 {
                bail!(
                    "port {} took only part of the priming burst: ask for fewer frames",
                    p.name
                );
            }
        }
    }
    tracing::info!("dpdk: primed {n} frames per port");
    Ok(())
}

/// A 64-byte (60 + FCS) TCP or UDP frame from 198.18.x.y (flow `i`) to `vip`.
fn bench_frame(mac: [u8; 6], proto: u8, i: u32, vip: std::net::Ipv4Addr, port: u16) -> Vec<u8> {
    use super::wire::{emit_ipv4_header, l4_checksum};
    let src = std::net::Ipv4Addr::from(0xc612_0000u32 + (i & 0xffff));
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&mac);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let l4_len = 60 - 34;
    emit_ipv4_header(&mut f[14..], 0, (20 + l4_len) as u16, proto, src, vip);
    f[34..36].copy_from_slice(&(1024 + (i >> 16) as u16).to_be_bytes());
    f[36..38].copy_from_slice(&port.to_be_bytes());
    let at = if proto == super::wire::PROTO_TCP {
        f[46] = 0x50;
        f[47] = 0x10; // ACK
        50
    } else {
        f[38..40].copy_from_slice(&(l4_len as u16).to_be_bytes());
        40
    };
    let c = l4_checksum(src, vip, proto, &f[34..]);
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Counters as JSON: every port/VIP/backend block (totals and per queue) and the driver's
/// own port counters.
fn report(e: &DpdkEngine, ran: Duration) -> String {
    let mut counters = serde_json::Map::new();
    for (name, r) in e.stats.packet_reports() {
        let totals: serde_json::Map<String, serde_json::Value> = r
            .totals
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        counters.insert(
            name,
            serde_json::json!({"total": totals, "per_queue": r.per_worker}),
        );
    }
    let hw: serde_json::Map<String, serde_json::Value> = e
        .ports
        .iter()
        .map(|p| {
            let (ipk, opk, imiss, oerr, nombuf) = p.hw_stats();
            (
                p.name.clone(),
                serde_json::json!({"ipackets": ipk, "opackets": opk, "imissed": imiss, "oerrors": oerr, "rx_nombuf": nombuf, "mac": mac_str(&p.mac)}),
            )
        })
        .collect();
    serde_json::json!({"engine": "dpdk", "run_seconds": ran.as_secs_f64(), "counters": counters, "ports": hw}).to_string()
}
