//! I/O engines: the worker threads that run the data plane.
//!
//! Owns the threads (one per worker, optionally pinned), their choice of engine
//! (`uring`: io_uring; `epoll`: readiness fallback), start-up and shutdown. Each worker
//! owns its ring or epoll set, its connection slab and its buffer pool, and shares
//! nothing with other workers but the published routing table and counter blocks it
//! writes only its own slot of. The proxy logic is engine-agnostic (`proxy::l4`); the
//! engine-agnostic worker logic is `core`; `uring` and `epoll` only move bytes.
//!
//! Must never: take a lock, allocate, or make a syscall per message on the steady path
//! (the epoll engine necessarily makes one `recv`/`send` per message — that is what
//! readiness I/O is). Unsafe code is confined to this folder, each block with its
//! invariant.

pub(crate) mod buf;
pub(crate) mod busy;
pub(crate) mod core;
pub mod dpdk;
pub(crate) mod epoll;
pub mod sys;
pub(crate) mod uring;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::core::{Core, Shared};
use crate::route::Routes;

/// Which engine runs the workers.
#[derive(
    clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    Uring,
    Epoll,
    /// Poll-mode NIC queues: the L4 packet load balancer (feature `dpdk`).
    #[cfg(feature = "dpdk")]
    Dpdk,
}

/// What a worker does when it has nothing to do.
#[derive(
    clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// Never sleep: lowest latency, one full core per worker.
    Spin,
    /// Spin for `spin` then wait in the kernel.
    Adaptive,
    /// Wait in the kernel at once.
    Park,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub kind: EngineKind,
    /// Resolved worker count (≥ 1); stats slots and listener sockets are sized to it.
    pub workers: usize,
    pub pin: bool,
    pub idle: Idle,
    pub spin: Duration,
}

impl EngineOptions {
    pub fn from_args(a: &crate::cli::EngineArgs) -> Self {
        let workers = a
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        EngineOptions {
            kind: a.engine,
            workers,
            pin: a.pin,
            idle: a.idle,
            spin: Duration::from_micros(a.spin_us),
        }
    }
}

/// What shutdown found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShutdownReport {
    /// Connections still open when the drain deadline passed (closed then).
    pub open_at_deadline: u64,
}

/// The running workers.
pub struct Engine {
    kind: EngineKind,
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Start `opts.workers` worker threads serving `routes`. `Auto` picks io_uring when
    /// this process may use it (with the flags we need), else epoll, and logs why.
    pub fn start(opts: EngineOptions, routes: Arc<Routes>) -> anyhow::Result<Engine> {
        let kind = resolve(opts.kind)?;
        let workers = opts.workers.max(1);
        let shared = Arc::new(Shared::new(workers));
        let cpus = if opts.pin { allowed_cpus() } else { Vec::new() };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let routes = routes.clone();
            let shared2 = shared.clone();
            let opts = opts.clone();
            let ready = ready_tx.clone();
            let cpu = (!cpus.is_empty()).then(|| cpus[w % cpus.len()]);
            let h = std::thread::Builder::new()
                .name(format!("tickmesh-w{w}"))
                .spawn(move || worker_main(w, kind, cpu, opts, routes, shared2, ready))
                .map_err(|e| anyhow::anyhow!("cannot spawn worker thread {w}: {e}"))?;
            handles.push(h);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some("a worker exited during start-up".to_string()),
            }
        }
        let engine = Engine {
            kind,
            shared,
            workers: handles,
        };
        if let Some(e) = failure {
            engine.shutdown(Duration::ZERO);
            anyhow::bail!("engine {kind:?} failed to start: {e}");
        }
        Ok(engine)
    }

    /// The engine actually running (never `Auto`).
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// Open TCP connections across workers (UDP sessions are not counted: they end by
    /// expiry, and shutdown closes them without waiting).
    pub fn open_connections(&self) -> u64 {
        core::open_total(&self.shared)
    }

    /// Stop accepting new connections/sessions; open ones continue.
    pub fn stop_accepting(&self) {
        self.shared.accepting.store(false, Ordering::Relaxed);
    }

    /// Wait up to `drain` for open connections to finish, close the rest, join workers.
    pub fn shutdown(self, drain: Duration) -> ShutdownReport {
        self.stop_accepting();
        let deadline = Instant::now() + drain;
        while self.open_connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let open_at_deadline = self.open_connections();
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.workers {
            if h.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        ShutdownReport { open_at_deadline }
    }
}

/// Pick the engine to run and say why.
fn resolve(kind: EngineKind) -> anyhow::Result<EngineKind> {
    match kind {
        #[cfg(feature = "dpdk")]
        EngineKind::Dpdk => anyhow::bail!(
            "the dpdk engine runs the L4 packet balancer through `tickmesh run --engine dpdk`, not as a socket engine"
        ),
        EngineKind::Epoll => {
            tracing::info!("engine: epoll (chosen with --engine epoll)");
            Ok(EngineKind::Epoll)
        }
        EngineKind::Uring => match uring::probe() {
            Ok(()) => {
                tracing::info!("engine: uring (chosen with --engine uring)");
                Ok(EngineKind::Uring)
            }
            Err(e) => anyhow::bail!(
                "io_uring is not usable here: {e}{}; run with --engine epoll (or auto)",
                disabled_hint()
            ),
        },
        EngineKind::Auto => match uring::probe() {
            Ok(()) => {
                tracing::info!(
                    "engine: uring (io_uring available with SINGLE_ISSUER|DEFER_TASKRUN)"
                );
                Ok(EngineKind::Uring)
            }
            Err(e) => {
                tracing::info!("engine: epoll (io_uring unusable: {e}{})", disabled_hint());
                Ok(EngineKind::Epoll)
            }
        },
    }
}

/// Whether io_uring is usable by this process (for tests that need it).
pub fn uring_available() -> Result<(), String> {
    uring::probe()
}

fn disabled_hint() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() != "0" => format!(" (kernel.io_uring_disabled = {})", v.trim()),
        _ => String::new(),
    }
}

fn worker_main(
    w: usize,
    kind: EngineKind,
    cpu: Option<usize>,
    opts: EngineOptions,
    routes: Arc<Routes>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_to(cpu) {
            tracing::warn!("worker {w}: cannot pin to CPU {cpu}: {e}");
        }
    }
    let mut core = Core::new(w, routes, shared);
    // The ring is created on the thread that submits to it (SINGLE_ISSUER).
    let result = match kind {
        EngineKind::Epoll => match epoll::Epoll::new() {
            Ok(mut io) => {
                let _ = ready.send(Ok(()));
                epoll::run(&mut core, &mut io, &opts)
            }
            Err(e) => {
                let _ = ready.send(Err(format!("epoll set-up: {e}")));
                return;
            }
        },
        _ => match uring::Uring::new() {
            Ok(mut io) => {
                let _ = ready.send(Ok(()));
                uring::run(&mut core, &mut io, &opts)
            }
            Err(e) => {
                let _ = ready.send(Err(format!("io_uring set-up: {e}")));
                return;
            }
        },
    };
    if let Err(e) = result {
        tracing::error!("worker {w} stopped on an I/O error: {e}");
    }
}

/// The CPUs the calling thread may run on, in order (empty if the kernel will not say).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    pin_to_cpus(&[cpu])
}

/// Pin the calling thread to `cpus` (threads it spawns afterwards inherit the mask).
pub(crate) fn pin_to_cpus(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET ignores CPUs beyond the set's size; pid 0
    // is the calling thread.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
