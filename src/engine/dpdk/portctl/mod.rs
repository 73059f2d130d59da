//! Port control: `tickmesh nic show|set dpdk:PORT` carried out through the DPDK API.
//!
//! Owns the control side of DPDK ports after they started: reading a port's driver,
//! link, offloads, queues, descriptors, RSS and the rte_flow rules this process made
//! (`rte_eth_dev_info_get`, `rte_eth_dev_conf_get`, `rte_eth_dev_rss_*`,
//! `rte_flow_validate/create/destroy`), and changing queues and descriptors by stop →
//! configure → queue set-up → start, restoring the previous set-up when a step fails.
//! The words and the report are `nic::dpdk`'s; this module only runs them.
//!
//! Two owners use it: the DPDK engine serves it on a Unix socket from a control thread
//! ([`serve`]), and `tickmesh nic --dpdk-vdev ...` runs it once in its own EAL
//! ([`standalone`]). It never runs on a worker lcore. Invariant with the engine: a port's
//! queues are only stopped or set up again while every worker is parked ([`PAUSE`],
//! checked once per poll loop, never holding an mbuf), and the queue counts the workers
//! poll never change under them.

mod ctl;
mod flow;
mod offload;
mod serve;

pub use serve::{serve, serve_engine, standalone, PortCtlServer};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dpdk_sys as sys;

use super::port::Mempool;
use crate::nic::dpdk::{parse_op, Request, Response, ALL_PORTS};
use crate::nic::sys::FlowRule;

// === parking the engine's workers ===

/// Set by the control thread to have every worker park at the top of its poll loop.
pub static PAUSE: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Worker side: called when [`PAUSE`] is seen, with no mbuf held; returns once it clears.
#[cold]
pub fn park() {
    PARKED.fetch_add(1, Ordering::SeqCst);
    // A pause lasts one queue reconfiguration (milliseconds): sleeping is fine here.
    while PAUSE.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_micros(50));
    }
    PARKED.fetch_sub(1, Ordering::SeqCst);
}

/// While alive, every worker is parked. Dropping it lets them go.
struct Parked;

impl Parked {
    fn all(workers: usize) -> Result<Parked, String> {
        PAUSE.store(true, Ordering::SeqCst);
        let guard = Parked;
        let deadline = Instant::now() + Duration::from_secs(2);
        while PARKED.load(Ordering::SeqCst) < workers {
            if Instant::now() > deadline {
                return Err(format!(
                    "the engine's {workers} worker(s) did not pause within 2 s (is the engine stopping?)"
                ));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(guard)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        PAUSE.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while PARKED.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

// === the ports under control ===

struct Flow {
    raw: *mut sys::rte_flow,
    rule: FlowRule,
}

struct CtlPort {
    id: u16,
    name: String,
    pool: *mut sys::rte_mempool,
    /// `Some` when the engine's workers poll this port: (RX, TX) queues they use.
    engine_queues: Option<(u16, u16)>,
    /// Descriptors per queue as last set up (for PMDs without `rx_queue_info_get`).
    desc: (u16, u16),
    flows: BTreeMap<u32, Flow>,
    next_flow: u32,
}

/// The ports one process controls and who that process is.
pub struct PortCtl {
    ports: Vec<CtlPort>,
    workers: usize,
    owner: String,
}

// SAFETY: the raw pointers are a mempool that outlives the PortCtl (the engine joins the
// control thread before it frees pools; `standalone` drops the PortCtl first) and rte_flow
// handles that only this PortCtl uses; DPDK's control calls may come from any one thread.
unsafe impl Send for PortCtl {}

impl PortCtl {
    /// `workers`: how many engine workers poll the ports (0 when none do).
    pub fn new(owner: String, workers: usize) -> PortCtl {
        PortCtl {
            ports: Vec::new(),
            workers,
            owner,
        }
    }

    /// A started port. `engine_queues`: the RX/TX queues the engine's workers poll.
    pub fn add_port(
        &mut self,
        id: u16,
        name: &str,
        pool: &Mempool,
        engine_queues: Option<(u16, u16)>,
    ) {
        let (mut rxd, mut txd) = (super::port::RX_DESC, super::port::TX_DESC);
        // SAFETY: valid configured port; the out-parameters are plain u16s. This repeats
        // the adjustment `Port::start` made, to know the descriptors it set up.
        unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rxd, &mut txd) };
        self.ports.push(CtlPort {
            id,
            name: name.to_string(),
            pool: pool.as_ptr(),
            engine_queues,
            desc: (rxd, txd),
            flows: BTreeMap::new(),
            next_flow: 1,
        });
    }

    fn find(&self, port: &str) -> Result<usize, String> {
        self.ports
            .iter()
            .position(|p| p.name == port || port.parse::<u16>().is_ok_and(|n| n == p.id))
            .ok_or_else(|| {
                format!(
                    "no DPDK port `{port}` here (ports: {})",
                    self.ports
                        .iter()
                        .map(|p| format!("dpdk:{} (dpdk:{})", p.name, p.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Run one request: show (no words) or set.
    pub fn handle(&mut self, req: &Request) -> Response {
        if req.port == ALL_PORTS && req.words.is_empty() {
            return match self.ports.iter().map(|p| p.report(&self.owner)).collect() {
                Ok(reports) => Response {
                    ok: true,
                    error: None,
                    message: None,
                    report: None,
                    reports,
                },
                Err(e) => Response::error(e),
            };
        }
        let i = match self.find(&req.port) {
            Ok(i) => i,
            Err(e) => return Response::error(e),
        };
        if req.words.is_empty() {
            return match self.ports[i].report(&self.owner) {
                Ok(r) => Response {
                    ok: true,
                    error: None,
                    message: None,
                    report: Some(r),
                    reports: Vec::new(),
                },
                Err(e) => Response::error(e),
            };
        }
        let name = self.ports[i].name.clone();
        let op = match parse_op(&req.words) {
            Ok(op) => op,
            Err(e) => return Response::error(format!("dpdk:{name}: {e}")),
        };
        match self.ports[i].apply(op, self.workers) {
            Ok(m) => Response {
                ok: true,
                error: None,
                message: Some(m),
                report: None,
                reports: Vec::new(),
            },
            Err(e) => Response::error(e),
        }
    }
}

impl Drop for PortCtl {
    fn drop(&mut self) {
        for p in &mut self.ports {
            for (fid, f) in std::mem::take(&mut p.flows) {
                let mut err = sys::rte_flow_error::default();
                // SAFETY: a live rule of a port that is still open (ports close after this).
                if unsafe { sys::rte_flow_destroy(p.id, f.raw, &mut err) } != 0 {
                    tracing::warn!("dpdk:{}: could not remove rte_flow rule {fid}", p.name);
                }
            }
        }
    }
}
