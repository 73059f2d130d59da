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

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dpdk_sys as sys;

use super::eal::{eal_args, strerror, Eal};
use super::port::{port_socket, probed_ports, Mempool, Port};
use super::DpdkArgs;
use crate::nic::dpdk::{
    ethtool_name, hex, offload_targets, parse_op, rss_names, DpdkAccess, Offload, PortFlow,
    PortLink, PortOp, PortQueues, PortReport, PortRings, PortRss, Request, Response, ALL_PORTS,
    DEFAULT_SOCKET, MAX_LINE,
};
use crate::nic::plan::RssWant;
use crate::nic::show::Part;
use crate::nic::sys::{weighted_table, FlowRule, FlowType};
use crate::nic::NicError;

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

/// An error from a DPDK call on a port: unsupported by the PMD, or failed, naming the item.
fn dpdk_err(p: &CtlPort, driver: &str, item: &str, api: &str, rc: i32) -> NicError {
    if rc == -libc::ENOTSUP || rc == -libc::ENOSYS {
        NicError::Unsupported(format!(
            "dpdk:{}: {item} is not supported by {driver} ({api})",
            p.name
        ))
    } else {
        NicError::Invalid(format!(
            "dpdk:{}: {item}: {api} failed: {}",
            p.name,
            strerror(-rc)
        ))
    }
}

fn dev_info(id: u16) -> Result<sys::rte_eth_dev_info, NicError> {
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: valid port id (probed); info is a properly sized out-parameter.
    let rc = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
    if rc != 0 {
        return Err(NicError::Invalid(format!(
            "port {id}: rte_eth_dev_info_get failed: {}",
            strerror(-rc)
        )));
    }
    Ok(info)
}

fn driver_name(info: &sys::rte_eth_dev_info) -> String {
    if info.driver_name.is_null() {
        return "unknown".into();
    }
    // SAFETY: DPDK points driver_name at the driver's static NUL-terminated name.
    unsafe { CStr::from_ptr(info.driver_name) }
        .to_string_lossy()
        .into_owned()
}

fn conf_get(id: u16) -> Result<sys::rte_eth_conf, i32> {
    let mut conf = sys::rte_eth_conf::default();
    // SAFETY: valid configured port; conf is an out-parameter.
    let rc = unsafe { sys::rte_eth_dev_conf_get(id, &mut conf) };
    if rc != 0 {
        return Err(rc);
    }
    Ok(conf)
}

fn reta_entries(size: u16) -> Vec<sys::rte_eth_rss_reta_entry64> {
    let groups = usize::from(size).div_ceil(sys::RTE_ETH_RETA_GROUP_SIZE as usize);
    (0..groups)
        .map(|_| sys::rte_eth_rss_reta_entry64 {
            mask: u64::MAX,
            reta: [0; 64],
        })
        .collect()
}

/// A flow item spec or mask: a protocol header's bytes in wire order, zero-padded to the
/// largest `rte_flow_item_*` struct we use (`rte_flow_item_ipv6` is 44 bytes).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ItemBytes([u8; 64]);

impl CtlPort {
    fn report(&self, owner: &str) -> Result<PortReport, NicError> {
        let id = self.id;
        let info = dev_info(id)?;
        let driver = driver_name(&info);
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port; mac is an out-parameter.
        unsafe { sys::rte_eth_macaddr_get(id, &mut mac) };
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port; link is an out-parameter.
        let rc = unsafe { sys::rte_eth_link_get_nowait(id, &mut link) };
        let link = if rc == 0 {
            Part::Value(PortLink {
                up: link.link_status() != 0,
                speed_mbps: link.link_speed,
                full_duplex: link.link_duplex() != 0,
                autoneg: link.link_autoneg() != 0,
            })
        } else {
            Part::Missing {
                unavailable: format!("not reported by {driver} ({})", strerror(-rc)),
            }
        };
        let conf = conf_get(id).unwrap_or_default();
        let mut offloads = Vec::new();
        for (rx, capa, on) in [
            (true, info.rx_offload_capa, conf.rxmode.offloads),
            (false, info.tx_offload_capa, conf.txmode.offloads),
        ] {
            for bit in 0..64 {
                let m = 1u64 << bit;
                if (capa | on) & m == 0 {
                    continue;
                }
                // SAFETY: returns a static NUL-terminated name ("UNKNOWN" for unknown bits).
                let name = unsafe {
                    CStr::from_ptr(if rx {
                        sys::rte_eth_dev_rx_offload_name(m)
                    } else {
                        sys::rte_eth_dev_tx_offload_name(m)
                    })
                }
                .to_string_lossy()
                .into_owned();
                offloads.push(Offload {
                    dir: if rx { "rx" } else { "tx" }.into(),
                    ethtool: ethtool_name(rx, &name).map(String::from),
                    dpdk: name,
                    available: capa & m != 0,
                    on: on & m != 0,
                });
            }
        }
        let (rxd, txd) = self.current_desc();
        Ok(PortReport {
            port_id: id,
            name: self.name.clone(),
            driver: driver.clone(),
            mac: hex(&mac.addr_bytes),
            owner: owner.to_string(),
            link,
            offloads,
            channels: PortQueues {
                rx: info.nb_rx_queues,
                tx: info.nb_tx_queues,
                max_rx: info.max_rx_queues,
                max_tx: info.max_tx_queues,
            },
            rings: PortRings {
                rx: rxd,
                tx: txd,
                rx_limits: (
                    info.rx_desc_lim.nb_min,
                    info.rx_desc_lim.nb_max,
                    info.rx_desc_lim.nb_align,
                ),
                tx_limits: (
                    info.tx_desc_lim.nb_min,
                    info.tx_desc_lim.nb_max,
                    info.tx_desc_lim.nb_align,
                ),
            },
            rss: self.rss(&info, &driver),
            flows: self
                .flows
                .iter()
                .map(|(id, f)| PortFlow {
                    id: *id,
                    rule: f.rule.clone(),
                })
                .collect(),
        })
    }

    fn current_desc(&self) -> (u16, u16) {
        let mut rxq = sys::rte_eth_rxq_info::default();
        let mut txq = sys::rte_eth_txq_info::default();
        // SAFETY: valid port with queue 0 set up; out-parameters.
        let rx = unsafe { sys::rte_eth_rx_queue_info_get(self.id, 0, &mut rxq) };
        // SAFETY: as above.
        let tx = unsafe { sys::rte_eth_tx_queue_info_get(self.id, 0, &mut txq) };
        (
            if rx == 0 && rxq.nb_desc > 0 {
                rxq.nb_desc
            } else {
                self.desc.0
            },
            if tx == 0 && txq.nb_desc > 0 {
                txq.nb_desc
            } else {
                self.desc.1
            },
        )
    }

    fn rss(&self, info: &sys::rte_eth_dev_info, driver: &str) -> Part<PortRss> {
        if info.flow_type_rss_offloads == 0 && info.reta_size == 0 {
            return Part::Missing {
                unavailable: format!(
                    "not supported by {driver} (no RSS hash functions, no redirection table)"
                ),
            };
        }
        let mut key = vec![0u8; usize::from(info.hash_key_size.max(40))];
        let mut rc_conf = sys::rte_eth_rss_conf {
            rss_key: key.as_mut_ptr(),
            rss_key_len: key.len() as u8,
            rss_hf: 0,
        };
        // SAFETY: valid port; rss_key points at rss_key_len writable bytes.
        let rc = unsafe { sys::rte_eth_dev_rss_hash_conf_get(self.id, &mut rc_conf) };
        let (enabled, key) = if rc == 0 {
            let n = usize::from(rc_conf.rss_key_len).min(key.len());
            (Some(rss_names(rc_conf.rss_hf)), hex(&key[..n]))
        } else {
            (None, String::new())
        };
        let mut reta = Vec::new();
        if info.reta_size > 0 {
            let mut e = reta_entries(info.reta_size);
            // SAFETY: `e` holds reta_size/64 groups (rounded up) with every mask bit set.
            let rc =
                unsafe { sys::rte_eth_dev_rss_reta_query(self.id, e.as_mut_ptr(), info.reta_size) };
            if rc == 0 {
                reta = e
                    .iter()
                    .flat_map(|g| g.reta.iter().map(|&q| u32::from(q)))
                    .take(usize::from(info.reta_size))
                    .collect();
            }
        }
        Part::Value(PortRss {
            supported: rss_names(info.flow_type_rss_offloads),
            enabled,
            key,
            reta,
        })
    }

    /// Stop, configure `queues`, set up every queue with `desc` descriptors, start.
    fn setup(
        &self,
        queues: (u16, u16),
        desc: (u16, u16),
        conf: &sys::rte_eth_conf,
    ) -> Result<(), (String, i32)> {
        let id = self.id;
        // SAFETY: valid port; stopping a started port (workers are parked or absent).
        let rc = unsafe { sys::rte_eth_dev_stop(id) };
        if rc != 0 {
            return Err(("rte_eth_dev_stop".into(), rc));
        }
        // SAFETY: stopped port; conf outlives the call.
        let rc = unsafe { sys::rte_eth_dev_configure(id, queues.0, queues.1, conf) };
        if rc != 0 {
            return Err(("rte_eth_dev_configure".into(), rc));
        }
        let socket = port_socket(id) as u32;
        for q in 0..queues.0 {
            // SAFETY: configured, stopped port; q < its RX queue count; the pool outlives it.
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(id, q, desc.0, socket, std::ptr::null(), self.pool)
            };
            if rc != 0 {
                return Err((
                    format!("rte_eth_rx_queue_setup (queue {q}, {} descriptors)", desc.0),
                    rc,
                ));
            }
        }
        for q in 0..queues.1 {
            // SAFETY: as above, TX queue with the default txconf.
            let rc =
                unsafe { sys::rte_eth_tx_queue_setup(id, q, desc.1, socket, std::ptr::null()) };
            if rc != 0 {
                return Err((
                    format!("rte_eth_tx_queue_setup (queue {q}, {} descriptors)", desc.1),
                    rc,
                ));
            }
        }
        // SAFETY: every queue is set up.
        let rc = unsafe { sys::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(("rte_eth_dev_start".into(), rc));
        }
        Ok(())
    }

    /// Change queue counts, descriptors and/or port offloads (`edit` changes the port's
    /// configuration); on failure put the previous set-up back.
    fn reconfigure(
        &mut self,
        item: &str,
        queues: (u16, u16),
        desc: (u16, u16),
        workers: usize,
        edit: impl FnOnce(&mut sys::rte_eth_conf),
    ) -> Result<String, NicError> {
        let info = dev_info(self.id)?;
        let driver = driver_name(&info);
        let before_q = (info.nb_rx_queues, info.nb_tx_queues);
        let before_d = self.current_desc();
        let old_conf = conf_get(self.id)
            .map_err(|rc| dpdk_err(self, &driver, item, "rte_eth_dev_conf_get", rc))?;
        let mut conf = old_conf;
        edit(&mut conf);
        let same_offloads = (conf.rxmode.offloads, conf.txmode.offloads)
            == (old_conf.rxmode.offloads, old_conf.txmode.offloads);
        if (queues, desc) == (before_q, before_d) && same_offloads {
            return Ok(format!(
                "dpdk:{}: {item} already as asked; nothing changed",
                self.name
            ));
        }
        if queues.0 > 1 && conf.rxmode.mq_mode != sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS {
            // SAFETY: constant getter in the shim.
            let hf = unsafe { sys::tm_eth_rss_ip_tcp_udp() } & info.flow_type_rss_offloads;
            if hf != 0 {
                conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
                conf.rx_adv_conf.rss_conf.rss_hf = hf;
            }
        }
        let _parked = if workers > 0 {
            Some(
                Parked::all(workers)
                    .map_err(|e| NicError::Io(format!("dpdk:{}: {item}: {e}", self.name)))?,
            )
        } else {
            None
        };
        match self.setup(queues, desc, &conf) {
            Ok(()) => {
                self.desc = desc;
                if !same_offloads {
                    return Ok(format!(
                        "dpdk:{}: {item} (port restarted): rx now {}; tx now {}",
                        self.name,
                        offload_names(true, conf.rxmode.offloads),
                        offload_names(false, conf.txmode.offloads)
                    ));
                }
                Ok(format!(
                    "dpdk:{}: {item}: rx queues {}→{} tx queues {}→{}, descriptors rx {}→{} tx {}→{}",
                    self.name, before_q.0, queues.0, before_q.1, queues.1, before_d.0, desc.0, before_d.1, desc.1
                ))
            }
            Err((step, rc)) => {
                let why = dpdk_err(self, &driver, item, &step, rc);
                let restored = match self.setup(before_q, before_d, &old_conf) {
                    Ok(()) => "the previous queues and descriptors were restored".to_string(),
                    Err((s, rc)) => format!("restoring the previous set-up failed too ({s}: {}): the port may be stopped", strerror(-rc)),
                };
                Err(match why {
                    NicError::Unsupported(m) => NicError::Unsupported(format!("{m}; {restored}")),
                    other => NicError::Invalid(format!("{other}; {restored}")),
                })
            }
        }
    }

    fn apply(&mut self, op: PortOp, workers: usize) -> Result<String, NicError> {
        let info = dev_info(self.id)?;
        let driver = driver_name(&info);
        let name = self.name.clone();
        let bad = |m: String| NicError::Invalid(format!("dpdk:{name}: {m}"));
        let (nrx, ntx) = (info.nb_rx_queues, info.nb_tx_queues);
        match op {
            PortOp::Channels { rx, tx } => {
                let want = (rx.unwrap_or(nrx), tx.unwrap_or(ntx));
                if let Some(q) = self.engine_queues {
                    if want != q {
                        return Err(bad(format!(
                            "channels: the DPDK engine polls {} RX and {} TX queue(s) on this port, one per worker; \
                             restart the engine with another --workers count to change them",
                            q.0, q.1
                        )));
                    }
                }
                if want.0 > info.max_rx_queues || want.1 > info.max_tx_queues {
                    return Err(bad(format!(
                        "channels rx {} tx {}: out of range ({driver} allows at most rx {} tx {})",
                        want.0, want.1, info.max_rx_queues, info.max_tx_queues
                    )));
                }
                if let Some((fid, f)) = self
                    .flows
                    .iter()
                    .find(|(_, f)| f.rule.queue.is_some_and(|q| q >= u64::from(want.0)))
                {
                    return Err(bad(format!(
                        "channels rx {}: rte_flow rule {fid} steers to queue {}; delete it first (flow del {fid})",
                        want.0,
                        f.rule.queue.unwrap_or(0)
                    )));
                }
                let desc = self.current_desc();
                self.reconfigure("channels", want, desc, workers, |_| {})
            }
            PortOp::Rings { rx, tx } => {
                let cur = self.current_desc();
                let want = (rx.unwrap_or(cur.0), tx.unwrap_or(cur.1));
                for (dir, n, lim) in [
                    ("rx", want.0, &info.rx_desc_lim),
                    ("tx", want.1, &info.tx_desc_lim),
                ] {
                    if n < lim.nb_min
                        || n > lim.nb_max
                        || (lim.nb_align > 1 && n % lim.nb_align != 0)
                    {
                        return Err(bad(format!(
                            "rings {dir} {n}: out of range ({driver} takes {}-{} descriptors, a multiple of {})",
                            lim.nb_min,
                            lim.nb_max,
                            lim.nb_align.max(1)
                        )));
                    }
                }
                self.reconfigure("rings", (nrx, ntx), want, workers, |_| {})
            }
            PortOp::Reta(want) => {
                if info.reta_size == 0 {
                    return Err(NicError::Unsupported(format!(
                        "dpdk:{name}: rss: {driver} has no RSS redirection table (reta size 0)"
                    )));
                }
                let weights = match &want {
                    RssWant::Equal(n) => vec![1; *n as usize],
                    RssWant::Weights(w) => w.clone(),
                    RssWant::Default => vec![1; usize::from(nrx)],
                };
                if weights.is_empty() || weights.len() > usize::from(nrx) {
                    return Err(bad(format!(
                        "rss: {} queue(s) asked for, the port has {nrx} RX queue(s)",
                        weights.len()
                    )));
                }
                let table = weighted_table(usize::from(info.reta_size), &weights)
                    .map_err(|e| bad(format!("rss: {e}")))?;
                let mut e = reta_entries(info.reta_size);
                for (i, q) in table.iter().enumerate() {
                    e[i / 64].reta[i % 64] = *q as u16;
                }
                // SAFETY: `e` covers reta_size entries, every mask bit set.
                let rc = unsafe {
                    sys::rte_eth_dev_rss_reta_update(self.id, e.as_mut_ptr(), info.reta_size)
                };
                if rc != 0 {
                    return Err(dpdk_err(
                        self,
                        &driver,
                        "rss redirection table",
                        "rte_eth_dev_rss_reta_update",
                        rc,
                    ));
                }
                Ok(format!(
                    "dpdk:{name}: rss redirection table ({} entries) now {}",
                    info.reta_size,
                    crate::nic::plan::summarize_table(&table)
                ))
            }
            PortOp::RssHash(hf) => {
                let missing = hf & !info.flow_type_rss_offloads;
                if missing != 0 {
                    return Err(NicError::Unsupported(format!(
                        "dpdk:{name}: rss hash {}: not supported by {driver} (it hashes: {})",
                        rss_names(missing).join(","),
                        if info.flow_type_rss_offloads == 0 {
                            "nothing".into()
                        } else {
                            rss_names(info.flow_type_rss_offloads).join(",")
                        }
                    )));
                }
                let mut c = sys::rte_eth_rss_conf {
                    rss_key: std::ptr::null_mut(),
                    rss_key_len: 0,
                    rss_hf: hf,
                };
                // SAFETY: valid port; a NULL key keeps the current key.
                let rc = unsafe { sys::rte_eth_dev_rss_hash_update(self.id, &mut c) };
                if rc != 0 {
                    return Err(dpdk_err(
                        self,
                        &driver,
                        "rss hash functions",
                        "rte_eth_dev_rss_hash_update",
                        rc,
                    ));
                }
                Ok(format!(
                    "dpdk:{name}: rss hash functions now {}",
                    rss_names(hf).join(",")
                ))
            }
            PortOp::RssKey(mut key) => {
                if info.flow_type_rss_offloads == 0 {
                    return Err(NicError::Unsupported(format!(
                        "dpdk:{name}: rss key: {driver} has no RSS hashing"
                    )));
                }
                // A PMD that does not report its key size takes the 40-byte Toeplitz key
                // (`struct rte_eth_rss_conf`: "If not NULL, 40-byte hash key").
                let size = if info.hash_key_size > 0 {
                    usize::from(info.hash_key_size)
                } else {
                    40
                };
                if key.len() != size {
                    return Err(bad(format!(
                        "rss key: {} bytes given, {driver} takes {size} bytes",
                        key.len()
                    )));
                }
                let Ok(len) = u8::try_from(key.len()) else {
                    return Err(bad(format!("rss key: {} bytes is too long", key.len())));
                };
                let mut cur = sys::rte_eth_rss_conf::default();
                // SAFETY: valid port; a NULL key asks for the hash functions only.
                let rc = unsafe { sys::rte_eth_dev_rss_hash_conf_get(self.id, &mut cur) };
                if rc != 0 {
                    return Err(dpdk_err(
                        self,
                        &driver,
                        "rss key",
                        "rte_eth_dev_rss_hash_conf_get",
                        rc,
                    ));
                }
                let mut c = sys::rte_eth_rss_conf {
                    rss_key: key.as_mut_ptr(),
                    rss_key_len: len,
                    rss_hf: cur.rss_hf,
                };
                // SAFETY: rss_key points at rss_key_len bytes that outlive the call.
                let rc = unsafe { sys::rte_eth_dev_rss_hash_update(self.id, &mut c) };
                if rc != 0 {
                    return Err(dpdk_err(
                        self,
                        &driver,
                        "rss key",
                        "rte_eth_dev_rss_hash_update",
                        rc,
                    ));
                }
                Ok(format!(
                    "dpdk:{name}: rss hash key set ({} bytes)",
                    key.len()
                ))
            }
            PortOp::FlowAdd(rule) => {
                if let Some(q) = rule.queue {
                    if q >= u64::from(nrx) {
                        return Err(bad(format!(
                            "flow rule: queue {q} does not exist (the port has {nrx} RX queue(s))"
                        )));
                    }
                }
                let raw = self.flow_create(&rule, &driver)?;
                let fid = self.next_flow;
                self.next_flow += 1;
                self.flows.insert(fid, Flow { raw, rule });
                Ok(format!(
                    "dpdk:{name}: added rte_flow rule {fid} (delete: tickmesh nic set dpdk:{name} flow del {fid})"
                ))
            }
            PortOp::Offloads(words) => {
                let (rx_on, tx_on) = self.offload_edit(&info, &driver, &words)?;
                let desc = self.current_desc();
                let what: Vec<String> = words
                    .iter()
                    .map(|(w, on)| format!("{w}={}", if *on { "on" } else { "off" }))
                    .collect();
                let m = self.reconfigure("offloads", (nrx, ntx), desc, workers, |c| {
                    c.rxmode.offloads = rx_on;
                    c.txmode.offloads = tx_on;
                })?;
                Ok(format!("{m}: {}", what.join(" ")))
            }
            PortOp::FlowDel(fid) => {
                let Some(f) = self.flows.get(&fid) else {
                    return Err(bad(format!(
                        "flow del {fid}: no rte_flow rule {fid} (rules: {})",
                        if self.flows.is_empty() {
                            "none".to_string()
                        } else {
                            self.flows
                                .keys()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    )));
                };
                let mut err = sys::rte_flow_error::default();
                // SAFETY: a rule this port created and has not destroyed.
                let rc = unsafe { sys::rte_flow_destroy(self.id, f.raw, &mut err) };
                if rc != 0 {
                    return Err(bad(format!(
                        "flow del {fid}: rte_flow_destroy failed: {}",
                        flow_error(&err, rc)
                    )));
                }
                self.flows.remove(&fid);
                Ok(format!("dpdk:{name}: deleted rte_flow rule {fid}"))
            }
        }
    }

    /// The port's RX and TX offload masks after `words`, each naming offloads the PMD must
    /// offer; a group changes the members it offers, as `ethtool -K` does.
    fn offload_edit(
        &self,
        info: &sys::rte_eth_dev_info,
        driver: &str,
        words: &[(String, bool)],
    ) -> Result<(u64, u64), NicError> {
        let conf = conf_get(self.id)
            .map_err(|rc| dpdk_err(self, driver, "offloads", "rte_eth_dev_conf_get", rc))?;
        let (mut rx_on, mut tx_on) = (conf.rxmode.offloads, conf.txmode.offloads);
        for (word, on) in words {
            let mut hit = false;
            let targets = offload_targets(word)?;
            for (rx, name) in &targets {
                let (capa, mask) = if *rx {
                    (info.rx_offload_capa, &mut rx_on)
                } else {
                    (info.tx_offload_capa, &mut tx_on)
                };
                let Some(bit) = offload_bit(*rx, capa, name) else {
                    continue;
                };
                if *on
                    && *rx
                    && self.engine_queues.is_some()
                    && FRAME_CHANGING.contains(&name.as_str())
                {
                    return Err(NicError::Invalid(format!(
                        "dpdk:{}: `{word}`: RX {name} changes the frames the engine's balancer parses                          (it expects whole, single-segment frames as sent); not on a port the engine polls",
                        self.name
                    )));
                }
                hit = true;
                if *on {
                    *mask |= bit;
                } else {
                    *mask &= !bit;
                }
            }
            if !hit {
                return Err(NicError::Unsupported(format!(
                    "dpdk:{}: `{word}` is not offered by {driver} ({})",
                    self.name,
                    targets
                        .iter()
                        .map(|(rx, n)| format!("{} {n}", if *rx { "rx" } else { "tx" }))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok((rx_on, tx_on))
    }

    /// Validate then create `eth / ipv4|ipv6 / tcp|udp → queue|drop` for `rule`.
    fn flow_create(&self, rule: &FlowRule, driver: &str) -> Result<*mut sys::rte_flow, NicError> {
        use sys::rte_flow_action_type as A;
        use sys::rte_flow_item_type as I;
        let zero = ItemBytes([0; 64]);
        let (mut l3, mut l3m, mut l4, mut l4m) = (zero, zero, zero, zero);
        let v6 = rule.flow_type.v6();
        // rte_ipv4_hdr: src at 12, dst at 16; rte_ipv6_hdr: src at 8, dst at 24.
        let (src_at, dst_at) = if v6 { (8, 24) } else { (12, 16) };
        for (at, a) in [(src_at, rule.src_ip), (dst_at, rule.dst_ip)] {
            let bytes = match a {
                Some(std::net::IpAddr::V4(v)) => v.octets().to_vec(),
                Some(std::net::IpAddr::V6(v)) => v.octets().to_vec(),
                None => continue,
            };
            l3.0[at..at + bytes.len()].copy_from_slice(&bytes);
            l3m.0[at..at + bytes.len()].fill(0xff);
        }
        // rte_tcp_hdr / rte_udp_hdr: src port at 0, dst port at 2.
        for (at, p) in [(0, rule.src_port), (2, rule.dst_port)] {
            if let Some(p) = p {
                l4.0[at..at + 2].copy_from_slice(&p.to_be_bytes());
                l4m.0[at..at + 2].fill(0xff);
            }
        }
        let item = |t, spec: Option<(&ItemBytes, &ItemBytes)>| sys::rte_flow_item {
            type_: t,
            spec: spec.map_or(std::ptr::null(), |s| s.0 as *const ItemBytes as *const _),
            last: std::ptr::null(),
            mask: spec.map_or(std::ptr::null(), |s| s.1 as *const ItemBytes as *const _),
        };
        let l3_spec = (rule.src_ip.is_some() || rule.dst_ip.is_some()).then_some((&l3, &l3m));
        let l4_spec = (rule.src_port.is_some() || rule.dst_port.is_some()).then_some((&l4, &l4m));
        let pattern = [
            item(I::RTE_FLOW_ITEM_TYPE_ETH, None),
            item(
                if v6 {
                    I::RTE_FLOW_ITEM_TYPE_IPV6
                } else {
                    I::RTE_FLOW_ITEM_TYPE_IPV4
                },
                l3_spec,
            ),
            item(
                match rule.flow_type {
                    FlowType::Tcp4 | FlowType::Tcp6 => I::RTE_FLOW_ITEM_TYPE_TCP,
                    FlowType::Udp4 | FlowType::Udp6 => I::RTE_FLOW_ITEM_TYPE_UDP,
                },
                l4_spec,
            ),
            item(I::RTE_FLOW_ITEM_TYPE_END, None),
        ];
        let queue = sys::rte_flow_action_queue {
            index: rule.queue.unwrap_or(0) as u16,
        };
        let actions = [
            match rule.queue {
                Some(_) => sys::rte_flow_action {
                    type_: A::RTE_FLOW_ACTION_TYPE_QUEUE,
                    conf: &queue as *const _ as *const _,
                },
                None => sys::rte_flow_action {
                    type_: A::RTE_FLOW_ACTION_TYPE_DROP,
                    conf: std::ptr::null(),
                },
            },
            sys::rte_flow_action {
                type_: A::RTE_FLOW_ACTION_TYPE_END,
                conf: std::ptr::null(),
            },
        ];
        let mut attr = sys::rte_flow_attr::default();
        attr.set_ingress(1);
        let mut err = sys::rte_flow_error::default();
        // SAFETY: pattern and actions are END-terminated arrays whose specs, masks and
        // confs (locals above) outlive both calls; DPDK copies what it keeps.
        let rc = unsafe {
            sys::rte_flow_validate(self.id, &attr, pattern.as_ptr(), actions.as_ptr(), &mut err)
        };
        if rc != 0 {
            let why = flow_error(&err, rc);
            return Err(if rc == -libc::ENOSYS || rc == -libc::ENOTSUP {
                NicError::Unsupported(format!(
                    "dpdk:{}: rte_flow rules are not supported by {driver} ({why})",
                    self.name
                ))
            } else {
                NicError::Invalid(format!(
                    "dpdk:{}: {driver} refused the rte_flow rule: {why}",
                    self.name
                ))
            });
        }
        // SAFETY: as above.
        let raw = unsafe {
            sys::rte_flow_create(self.id, &attr, pattern.as_ptr(), actions.as_ptr(), &mut err)
        };
        if raw.is_null() {
            // SAFETY: plain read of this thread's rte_errno.
            let rc = -unsafe { sys::tm_rte_errno() };
            return Err(NicError::Invalid(format!(
                "dpdk:{}: rte_flow_create failed on {driver}: {}",
                self.name,
                flow_error(&err, rc)
            )));
        }
        Ok(raw)
    }
}

/// RX offloads that hand the balancer something other than the frame on the wire.
const FRAME_CHANGING: &[&str] = &[
    "TCP_LRO",
    "VLAN_STRIP",
    "QINQ_STRIP",
    "KEEP_CRC",
    "SCATTER",
    "BUFFER_SPLIT",
    "MACSEC_STRIP",
    "SECURITY",
];

/// DPDK's names of the offloads in `mask`, comma-separated (`none` when empty).
fn offload_names(rx: bool, mask: u64) -> String {
    let names: Vec<String> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|m| mask & m != 0)
        .map(|m| {
            // SAFETY: returns a static NUL-terminated name for any single bit.
            let p = unsafe {
                if rx {
                    sys::rte_eth_dev_rx_offload_name(m)
                } else {
                    sys::rte_eth_dev_tx_offload_name(m)
                }
            };
            // SAFETY: as above, never NULL ("UNKNOWN" for unknown bits).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        })
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// The bit of the offload DPDK calls `name` among those `capa` offers.
fn offload_bit(rx: bool, capa: u64, name: &str) -> Option<u64> {
    (0..64).map(|b| 1u64 << b).find(|m| {
        capa & m != 0 && {
            // SAFETY: returns a static NUL-terminated name for any single bit.
            let p = unsafe {
                if rx {
                    sys::rte_eth_dev_rx_offload_name(*m)
                } else {
                    sys::rte_eth_dev_tx_offload_name(*m)
                }
            };
            // SAFETY: as above, never NULL ("UNKNOWN" for unknown bits).
            unsafe { CStr::from_ptr(p) }.to_bytes() == name.as_bytes()
        }
    })
}

fn flow_error(err: &sys::rte_flow_error, rc: i32) -> String {
    let msg = if err.message.is_null() {
        String::new()
    } else {
        // SAFETY: DPDK sets message to a NUL-terminated string that lives as long as the port.
        unsafe { CStr::from_ptr(err.message) }
            .to_string_lossy()
            .into_owned()
    };
    if msg.is_empty() {
        strerror(-rc)
    } else {
        format!("{msg} ({})", strerror(-rc))
    }
}

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

// === the engine's port-control socket ===

/// The engine's hook: serve its started `ports` (each with the pool of its NUMA socket)
/// for `workers` polling workers on `path` (default [`DEFAULT_SOCKET`]) until `stop`.
pub fn serve_engine(
    ports: &[Port],
    pools: &[Mempool],
    workers: usize,
    path: Option<PathBuf>,
    stop: &'static AtomicBool,
) -> Option<std::thread::JoinHandle<()>> {
    let mut ctl = PortCtl::new(
        format!("tickmesh run --engine dpdk (pid {})", std::process::id()),
        workers,
    );
    for p in ports {
        let Some(pool) = pools.iter().find(|m| m.socket == p.socket) else {
            tracing::warn!(
                "dpdk: port {} has no mbuf pool on its socket; port control leaves it out",
                p.name
            );
            continue;
        };
        ctl.add_port(p.id, &p.name, pool, Some((p.rx_queues, p.tx_queues)));
    }
    serve(path.unwrap_or_else(|| DEFAULT_SOCKET.into()), ctl, stop)
}

/// Serve `ctl` on a Unix socket (mode 0600) until `stop` is set; the socket file is
/// removed at the end and the rte_flow rules made through it are destroyed. Returns
/// `None` (with a warning) when the socket cannot be made: the engine runs without it.
pub fn serve(
    path: PathBuf,
    ctl: PortCtl,
    stop: &'static AtomicBool,
) -> Option<std::thread::JoinHandle<()>> {
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("dpdk: port control (tickmesh nic on dpdk: ports) is off: {e:#}");
            return None;
        }
    };
    tracing::info!("dpdk: port control on {}", path.display());
    let mut ctl = ctl;
    std::thread::Builder::new()
        .name("tm-dpdk-nic".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        if let Err(e) = one_request(s, &mut ctl) {
                            tracing::warn!("dpdk: port control request: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::warn!("dpdk: port control accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
            drop(ctl);
        })
        .map_err(|e| tracing::warn!("dpdk: port control thread: {e}"))
        .ok()
}

fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another process serves {} (give this engine its own with --dpdk-nic-socket)",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path); // stale, from a process that died
    }
    let l = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn one_request(s: UnixStream, ctl: &mut PortCtl) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_LINE as u64)).read_line(&mut line)?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => ctl.handle(&req),
        Err(e) => Response::error(format!("not a port-control request ({e})")),
    };
    let mut out = serde_json::to_string(&resp).map_err(std::io::Error::other)?;
    out.push('\n');
    (&s).write_all(out.as_bytes())
}

// === `tickmesh nic --dpdk-vdev ...`: a port of our own ===

/// Start an EAL with the given devices, open the port with one queue pair, run the
/// request (and, after a change, show the port) and tear everything down.
pub fn standalone(access: &DpdkAccess, req: &Request) -> anyhow::Result<Response> {
    let mut eal_extra = vec!["--log-level=error".to_string()];
    eal_extra.extend(access.dpdk_eal_arg.iter().cloned());
    let args = DpdkArgs {
        dpdk_vdev: access.dpdk_vdev.clone(),
        dpdk_allow: access.dpdk_allow.clone(),
        dpdk_no_huge: !access.dpdk_huge,
        dpdk_eal_arg: eal_extra,
        ..Default::default()
    };
    let prefix = format!("tickmesh-nic-{}", std::process::id());
    let eal = Eal::init(eal_args(&args, 1, &prefix), args.dpdk_no_huge)?;
    let probed = probed_ports();
    let (id, name) = probed
        .iter()
        .find(|(id, n)| *n == req.port || req.port.parse::<u16>().is_ok_and(|x| x == *id))
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no DPDK port `{}` among the devices given (ports: {})",
                req.port,
                probed
                    .iter()
                    .map(|(i, n)| format!("dpdk:{n} (dpdk:{i})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let pool = Mempool::new("tm_nic_pool", 8191, port_socket(id))?;
    let port = Port::start(id, &name, 1, 1, &pool)?;
    let mut ctl = PortCtl::new(
        "this command only (its own EAL; what it changes ends when it exits)".into(),
        0,
    );
    ctl.add_port(id, &name, &pool, None);
    let mut resp = ctl.handle(req);
    // After a change — made, or refused and rolled back — show the port as it is now.
    if !req.words.is_empty() && ctl.find(&req.port).is_ok() {
        let show = ctl.handle(&Request {
            port: req.port.clone(),
            words: Vec::new(),
        });
        resp.report = show.report;
    }
    // Order: rules, then the port, the pool and the EAL.
    drop(ctl);
    drop(port);
    drop(pool);
    drop(eal);
    Ok(resp)
}
