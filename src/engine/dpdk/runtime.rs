//! `tickmesh run --engine dpdk`: the EAL, the ports and one poll loop per worker lcore.
//!
//! Owns start-up order (EAL → pools → ports → workers), the worker loop (RX burst of 32
//! with prefetch → balancer verdict → TX burst on the same queue, exception frames to the
//! kernel port) and the clean shutdown (workers joined → ports stopped and closed → pools
//! freed → `rte_eal_cleanup`). Workers never lock, allocate or make a syscall per packet:
//! they read the published [`LbTable`] once per loop through `arc-swap`.
//!
//! Config and live updates: the same control plane and control socket as the other
//! engines (`apply`, `delete`, `get`, `stats`; SIGHUP re-applies `--config`). Through the
//! [`PacketTables`] hook it compiles every accepted config into a new [`LbTable`] and
//! swaps it in; each worker's flow table keeps established flows on their backends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use dpdk_sys as sys;

use super::eal::{eal_args, Eal};
use super::lb::{LbAddressing, LbTable, LbWorker, PortCtx, Verdict};
use super::port::{port_socket, probed_ports, Burst, Mempool, Port, BURST};
use crate::config::{self, Config};
use crate::control::{ControlPlane, ControlSocket, PacketTables, StagedTables, StateDir};
use crate::daemon::DaemonOptions;
use crate::engine::busy::BusyMeter;
use crate::engine::{allowed_cpus, pin_to_cpus, EngineOptions, Idle};
use crate::telemetry::{PortCounter as C, PortStats, StatsRegistry, WorkerStats};

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}
extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

/// The balancer's published table and what compiling one needs: the control plane's
/// [`PacketTables`] hook. Workers `load()` `current` once per loop.
pub struct LbTables {
    pub current: Arc<ArcSwap<LbTable>>,
    pub addressing: LbAddressing,
    /// Flow entries remember the table epoch they resolved their backend index in; every
    /// compile gets a new one (a recompile may keep the config generation).
    epoch: AtomicU64,
}

impl LbTables {
    pub fn new(addressing: LbAddressing) -> anyhow::Result<LbTables> {
        let empty = LbTable::compile(&Config::default(), &addressing, 0, &StatsRegistry::new(1))
            .map_err(|e| anyhow::anyhow!("the empty balancer table: {e}"))?;
        Ok(LbTables {
            current: Arc::new(ArcSwap::from_pointee(empty)),
            addressing,
            epoch: AtomicU64::new(1),
        })
    }
}

struct StagedLb {
    table: LbTable,
    into: Arc<ArcSwap<LbTable>>,
}

impl StagedTables for StagedLb {
    fn publish(self: Box<Self>) {
        self.into.store(Arc::new(self.table));
    }
}

impl PacketTables for LbTables {
    fn compile(
        &self,
        cfg: &Config,
        generation: u64,
        stats: &StatsRegistry,
    ) -> Result<Box<dyn StagedTables>, config::ConfigError> {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed);
        let table = LbTable::compile(cfg, &self.addressing, epoch, stats)?;
        tracing::debug!("dpdk: compiled config generation {generation} as table epoch {epoch}");
        Ok(Box::new(StagedLb {
            table,
            into: self.current.clone(),
        }))
    }
}
/// The running DPDK engine. Field order is drop order: ports close before pools free,
/// and both before the EAL is cleaned up.
struct DpdkEngine {
    tables: Arc<LbTables>,
    ports: Vec<Port>,
    pools: Vec<Mempool>,
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
    /// The worker loops' busy time (`tickmesh stats` → `worker_loops`, and the exit report).
    loops: Arc<WorkerStats>,
}

/// `tickmesh run --engine dpdk`: the daemon with the DPDK engine. The config comes from
/// where the other engines take it (`--config`, else the persisted one, else the
/// default), the control socket serves apply/delete/get/stats, and SIGHUP re-applies
/// `--config` through the control plane. Runs until SIGINT/SIGTERM; then prints every
/// counter as JSON on stdout.
pub fn run(args: &crate::cli::RunArgs) -> anyhow::Result<()> {
    let opts = EngineOptions::from_args(&args.engine);
    let dopts = DaemonOptions::from_args(args);
    let d = &args.dpdk;
    let workers = opts.workers;
    let tables = Arc::new(LbTables::new(d.addressing()?)?);

    // Claimed first, like the other engines' daemon: a second daemon on the same socket
    // fails before it touches DPDK.
    let socket = ControlSocket::bind(&dopts.control)?;
    let store = StateDir::open(&dopts.state_dir)?;
    let (cfg, generation, persist, origin) = crate::daemon::resolve(&dopts.config, &store)?;
    // The config's kernel-side NIC profile (host settings, kernel interfaces), applied
    // before the EAL starts and watched for drift, as `tickmesh run` does.
    let _nic_watch = cfg
        .nic
        .as_ref()
        .map(crate::daemon::NicWatch::start)
        .transpose()
        .context("the config's nic profile")?;

    let plane = ControlPlane::with_packet_engine(
        workers,
        cfg,
        generation,
        Some(store),
        persist,
        Some(tables.clone()),
    )
    .map_err(|e| anyhow::anyhow!("{origin} cannot run on the DPDK engine: {e}"))?;
    let plane = Arc::new(plane);
    let stats = plane.stats_registry();

    let prefix = d
        .dpdk_file_prefix
        .clone()
        .unwrap_or_else(|| format!("tickmesh-{}", std::process::id()));
    // The CPUs the process may use, before the EAL pins this thread to the main lcore.
    let process_cpus = allowed_cpus();
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
        tables,
        ports,
        pools,
        _eal: eal,
    };
    for v in engine.tables.current.load().vips.iter() {
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
            tables: engine.tables.current.clone(),
            flows: d.dpdk_flows,
            idle: opts.idle,
            spin: opts.spin,
            loops: stats.worker_loops(),
        })
        .collect();

    // The threads that are not workers (control socket, SIGHUP reload, port control)
    // start on the CPUs outside the lcores, as DPDK places its own control threads: born
    // on the main lcore they would inherit its pin and preempt worker 0 at every tick.
    let placement = ControlPlacement::enter(&process_cpus);
    let server = socket.serve(plane.clone())?;
    // Reload thread (not an lcore): SIGHUP re-applies --config through the control plane
    // (validated, persisted, a new generation — as `tickmesh apply --prune` would);
    // never touches DPDK.
    let config_path = args.config.clone();
    let ctl = {
        let plane = plane.clone();
        std::thread::Builder::new()
            .name("tm-dpdk-hup".into())
            .spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    if RELOAD.swap(false, Ordering::SeqCst) {
                        reload(&plane, config_path.as_deref());
                    }
                }
            })
            .context("spawning the reload thread")?
    };

    // Port control for `tickmesh nic ... dpdk:PORT`, on its own thread (never an lcore).
    let portctl = super::portctl::serve_engine(
        &engine.ports,
        &engine.pools,
        workers,
        d.dpdk_nic_socket.clone(),
        &STOP,
    );

    // Back on the main lcore's CPU: worker 0 runs on this thread.
    drop(placement);
    if let Some(n) = d.dpdk_bench_prime {
        prime(&engine, n)?;
    }
    if let Some(n) = d.dpdk_bench_ping {
        let r = ping(&engine, n);
        STOP.store(true, Ordering::SeqCst);
        let _ = ctl.join();
        server.stop();
        println!("{}", r?);
        return Ok(());
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
        "dpdk engine running: {workers} worker(s); config generation {generation} from {origin}; control socket {}; SIGHUP re-applies --config, SIGTERM stops",
        dopts.control.display()
    );
    worker_loop(&main_ctx);
    for l in launched {
        // SAFETY: main lcore waits for the workers it launched.
        unsafe { sys::rte_eal_wait_lcore(l) };
    }
    let _ = ctl.join();
    server.stop();
    // The port-control thread destroys its rte_flow rules before the ports close (on an
    // early return the guard does the same when it drops, before `engine`).
    drop(portctl);
    drop(main_ctx);

    println!("{}", report(&engine, &stats, started.elapsed()));
    // Drop order: ports (stop, close), pools, then EAL cleanup.
    drop(engine);
    Ok(())
}

/// SIGHUP: apply `--config` as the whole config (prune), or say why not.
fn reload(plane: &ControlPlane, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: the daemon was started without --config; nothing to re-read (use `tickmesh apply`)");
        return;
    };
    let applied = crate::cli::read_config_file(path).and_then(|(text, format)| {
        plane
            .apply(&text, format, true)
            .map_err(|e| anyhow::anyhow!("{e}"))
    });
    match applied {
        Ok(r) => tracing::info!(
            "SIGHUP: {} re-applied (generation {})",
            path.display(),
            r.generation
        ),
        Err(e) => tracing::error!(
            "SIGHUP: {} rejected, the running config stays: {e:#}",
            path.display()
        ),
    }
}

unsafe extern "C" fn lcore_entry(arg: *mut std::os::raw::c_void) -> std::os::raw::c_int {
    // SAFETY: `arg` is the Box leaked for this lcore by `run`, reclaimed only here.
    let ctx = unsafe { Box::from_raw(arg.cast::<WorkerCtx>()) };
    worker_loop(&ctx);
    0
}

/// While alive, the main thread runs on the process's CPUs minus the lcores' (all of
/// them when the lcores take every CPU), so the threads it spawns start there; dropped,
/// it is pinned back to the main lcore.
struct ControlPlacement {
    main_lcore: Vec<usize>,
}

impl ControlPlacement {
    /// `process`: the CPUs the process had before the EAL pinned this thread (empty:
    /// unknown, and nothing is moved).
    fn enter(process: &[usize]) -> Option<ControlPlacement> {
        let main_lcore = allowed_cpus();
        if process.is_empty() || main_lcore.is_empty() {
            return None;
        }
        let mut lcore_cpus = Vec::new();
        // SAFETY: EAL is running; lcore queries from the main lcore.
        let mut l = unsafe { sys::rte_get_next_lcore(u32::MAX, 0, 0) };
        while l < sys::RTE_MAX_LCORE {
            // SAFETY: `l` is an enabled lcore id, below RTE_MAX_LCORE.
            let cpu = unsafe { sys::rte_lcore_to_cpu_id(l as i32) };
            if let Ok(cpu) = usize::try_from(cpu) {
                lcore_cpus.push(cpu);
            }
            // SAFETY: as above.
            l = unsafe { sys::rte_get_next_lcore(l, 0, 0) };
        }
        let mut control: Vec<usize> = process
            .iter()
            .copied()
            .filter(|c| !lcore_cpus.contains(c))
            .collect();
        if control.is_empty() {
            tracing::info!(
                "dpdk: the lcores take every CPU of this process: control threads share them"
            );
            control = process.to_vec();
        }
        pin_to_cpus(&control).ok()?;
        Some(ControlPlacement { main_lcore })
    }
}

impl Drop for ControlPlacement {
    fn drop(&mut self) {
        if let Err(e) = pin_to_cpus(&self.main_lcore) {
            tracing::warn!("dpdk: cannot pin the main lcore's thread back to its CPU: {e}");
        }
    }
}

/// Milliseconds of the TSC, given its ticks per millisecond (worked out once).
fn now_ms(ticks_per_ms: u64) -> u64 {
    // SAFETY: reading the TSC has no preconditions.
    let c = unsafe { sys::tm_get_tsc_cycles() };
    c / ticks_per_ms
}

// A burst never exceeds what the balancer takes at once.
const _: () = assert!(BURST <= super::lb::MAX_BURST);

fn worker_loop(ctx: &WorkerCtx) {
    let w = ctx.worker;
    let q = w as u16;
    let mut lb = LbWorker::new(w, ctx.flows);
    let mut rx = Burst::default();
    let mut fwd = Burst::default();
    let mut exc = Burst::default();
    let mut verdicts = [Verdict::Drop; BURST];
    // SAFETY: plain query once the EAL runs.
    let ticks_per_ms = (unsafe { sys::rte_get_tsc_hz() } / 1000).max(1);
    let spin_ms = ctx.spin.as_millis() as u64;
    // Busy time as testpmd's `--record-core-cycles` and the socket engines count it: a
    // turn that received anything counts whole (its empty polls of other ports and its
    // TX included), an empty turn does not. The meter's one tick read per turn is also
    // the worker's clock once calibrated (≤ 1 ms in), so a turn reads the TSC once.
    let mut busy = BusyMeter::new();
    let origin_ms = now_ms(ticks_per_ms);
    let mut now = origin_ms;
    let mut last_work = now;
    while !STOP.load(Ordering::Relaxed) {
        // `tickmesh nic set dpdk:PORT rings|...` parks workers while it stops the port.
        if super::portctl::PAUSE.load(Ordering::Relaxed) {
            super::portctl::park();
            busy.woke();
            continue;
        }
        let table = ctx.tables.load();
        now = match busy.now_ns() {
            Some(ns) => now.max(origin_ms + ns / 1_000_000),
            None => now_ms(ticks_per_ms),
        };
        let mut work = 0usize;
        for (port, mac, stats) in &ctx.data {
            let n = rx.rx(*port, q);
            if n == 0 {
                continue;
            }
            work += n;
            let pctx = PortCtx { mac: *mac, stats };
            // (The balancer prefetches each frame's data a few frames ahead of its parse.)
            let (bytes, fwd_bytes, forwarded) =
                lb.process_burst(&table, &pctx, rx.mbufs_mut(), &mut verdicts[..n], now);
            // The received burst becomes the TX burst in place; when every frame is
            // forwarded (the common burst) it already is.
            if forwarded < n {
                rx.keep_forwarded(&verdicts[..n], ctx.exception.is_some().then_some(&mut exc));
            }
            stats.add(w, C::RxPackets, n as u64);
            stats.add(w, C::RxBytes, bytes);
            let (sent, sent_bytes, dropped) = rx.tx_counted(*port, q, fwd_bytes);
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
        busy.lap(work > 0, work);
        busy.publish(&ctx.loops, w, now);
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
            _ => {
                std::thread::sleep(Duration::from_micros(100));
                busy.woke();
            }
        }
    }
    // The last millisecond too: the exit report divides busy time by packets.
    busy.flush(&ctx.loops, w);
}

/// Wait (bounded) until `p`'s link is up: a net_memif port needs its peer to connect.
fn wait_link(p: &Port) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port; `link` is a properly sized out-parameter.
        unsafe { sys::rte_eth_link_get_nowait(p.id, &mut link) };
        if link.link_status() != 0 {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!(
                "port {} link stayed down for 10 s: is the peer running?",
                p.name
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll `p`'s receive queue 0 once (freeing whatever came) before sending on it: a
/// net_memif client hands its peer the receive buffers (server-to-client ring
/// descriptors) only from its RX burst. Without them a server that forwards the first
/// frames straight back (testpmd io) finds no room and drops every one — which made the
/// two-process memif bench look as if the client's frames never arrived.
fn arm_rx(p: &Port) {
    let mut rx = Burst::default();
    let n = rx.rx(p.id, 0);
    for i in 0..n {
        drop(rx.take(i));
    }
    rx.reset();
}

/// Benchmark priming: `n` distinct TCP flows to the first VIP, sent once out of every
/// data port. On a loopback device they come back and circulate through the balancer.
fn prime(e: &DpdkEngine, n: usize) -> anyhow::Result<()> {
    let table = e.tables.current.load();
    let Some(vip) = table.vips.first() else {
        bail!("--dpdk-bench-prime needs a listener (VIP) in the config");
    };
    let std::net::SocketAddr::V4(va) = vip.addr else {
        bail!("--dpdk-bench-prime sends IPv4 frames: make the first listener an IPv4 VIP");
    };
    let proto = vip.protocol;
    for p in &e.ports {
        wait_link(p)?;
        arm_rx(p);
    }
    let mut total = 0;
    for p in &e.ports {
        let pool = e
            .pools
            .iter()
            .find(|m| m.socket == p.socket)
            .expect("every port has a pool");
        // A port whose peer has just connected (net_memif) may take a burst only in
        // part at first: what it refused is sent again, for up to 2 s.
        let (mut sent, t0) = (0, std::time::Instant::now());
        while sent < n {
            let mut burst = Burst::default();
            let mut k = 0;
            while !burst.is_full() && sent + k < n {
                let i = (sent + k) as u32;
                let f = bench_frame(p.mac, proto, i, *va.ip(), va.port());
                let m = pool
                    .alloc_frame(&f)
                    .ok_or_else(|| anyhow::anyhow!("mbuf pool exhausted while priming"))?;
                burst.push(m);
                k += 1;
            }
            sent += burst.tx(p.id, 0).0 as usize;
            if sent < n {
                if t0.elapsed() > Duration::from_secs(2) {
                    // (a net_memif server may refuse to send before it has received:
                    // frames primed on its peer reach it anyway)
                    tracing::warn!("port {} took only {sent} of {n} priming frames", p.name);
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        total += sent;
    }
    if total == 0 {
        bail!("no port took a priming frame");
    }
    tracing::info!("dpdk: primed {n} frames per port");
    Ok(())
}

/// Benchmark: `n` round trips of one 64-byte frame (flows cycling over 1,024, so a
/// balancer on the far side works from its flow table) out of the first data port, each
/// timed with the TSC from just before the TX burst to the RX burst that returns it.
/// 1,000 unrecorded warm-up trips first. A trip not back within 10 ms counts as lost.
fn ping(e: &DpdkEngine, n: usize) -> anyhow::Result<String> {
    let table = e.tables.current.load();
    let Some(vip) = table.vips.first() else {
        bail!("--dpdk-bench-ping needs a listener (VIP) in the config");
    };
    let std::net::SocketAddr::V4(va) = vip.addr else {
        bail!("--dpdk-bench-ping sends IPv4 frames: make the first listener an IPv4 VIP");
    };
    let Some(p) = e.ports.first() else {
        bail!("--dpdk-bench-ping needs a port");
    };
    let pool = e
        .pools
        .iter()
        .find(|m| m.socket == p.socket)
        .expect("every port has a pool");
    // SAFETY: plain queries once the EAL runs.
    let hz = unsafe { sys::rte_get_tsc_hz() };
    let tsc = || unsafe { sys::tm_get_tsc_cycles() };
    wait_link(p)?;
    arm_rx(p);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .context("latency histogram")?;
    let mut rx = Burst::default();
    let (warm, mut lost, mut extra) = (1000usize, 0u64, 0u64);
    let frames: Vec<Vec<u8>> = (0..1024u32)
        .map(|i| bench_frame(p.mac, vip.protocol, i, *va.ip(), va.port()))
        .collect();
    for i in 0..warm + n {
        let m = pool
            .alloc_frame(&frames[i % frames.len()])
            .ok_or_else(|| anyhow::anyhow!("mbuf pool exhausted while pinging"))?;
        let mut b = Burst::default();
        b.push(m);
        let start = tsc();
        if b.tx(p.id, 0).0 == 0 {
            lost += 1;
            continue;
        }
        let back = loop {
            let k = rx.rx(p.id, 0);
            if k > 0 {
                let t = tsc();
                extra += k as u64 - 1;
                for j in 0..k {
                    drop(rx.take(j));
                }
                rx.reset();
                break Some(t);
            }
            if tsc().wrapping_sub(start) > hz / 100 {
                break None;
            }
        };
        match back {
            Some(t) if i >= warm => {
                let ns = (t.wrapping_sub(start) as u128 * 1_000_000_000 / u128::from(hz)) as u64;
                hist.saturating_record(ns.max(1));
            }
            Some(_) => {}
            None => lost += 1,
        }
    }
    let q = |p: f64| hist.value_at_quantile(p);
    Ok(serde_json::json!({"ping": {
        "count": hist.len(), "lost": lost, "unexpected": extra,
        "min_ns": hist.min(), "p50_ns": q(0.5), "p90_ns": q(0.9), "p99_ns": q(0.99),
        "p999_ns": q(0.999), "max_ns": hist.max(), "mean_ns": hist.mean(),
    }})
    .to_string())
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
fn report(e: &DpdkEngine, stats: &StatsRegistry, ran: Duration) -> String {
    // One counter block: its totals and its per-worker (= per queue) slots.
    let block = |r: &crate::telemetry::CounterReport| {
        let totals: serde_json::Map<String, serde_json::Value> = r
            .totals
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        serde_json::json!({"total": totals, "per_queue": r.per_worker})
    };
    let counters: serde_json::Map<String, serde_json::Value> = stats
        .packet_reports()
        .iter()
        .map(|(name, r)| (name.clone(), block(r)))
        .collect();
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
    let loops = block(&stats.worker_loops().report());
    serde_json::json!({"engine": "dpdk", "run_seconds": ran.as_secs_f64(), "counters": counters, "ports": hw, "worker_loops": loops}).to_string()
}
