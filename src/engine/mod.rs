//! I/O engines: the worker threads that run the data plane.
//!
//! (interface fixed by the foundation; the `uring` and `epoll` engines land in
//! `engine/uring` and `engine/epoll`.)

pub mod dpdk;

use std::sync::Arc;
use std::time::Duration;

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
    _private: (),
}

impl Engine {
    pub fn start(_opts: EngineOptions, _routes: Arc<Routes>) -> anyhow::Result<Engine> {
        anyhow::bail!("the I/O engines are not built yet")
    }

    /// The engine actually running (never `Auto`).
    pub fn kind(&self) -> EngineKind {
        EngineKind::Auto
    }

    /// Stop accepting new connections/sessions; open ones continue.
    pub fn stop_accepting(&self) {}

    /// Wait up to `drain` for open connections to finish, close the rest, join workers.
    pub fn shutdown(self, _drain: Duration) -> ShutdownReport {
        ShutdownReport::default()
    }
}
