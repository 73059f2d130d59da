//! One port under control: reading its state into a report, and the changes `nic set`
//! makes (queues, descriptors, RSS, offloads, rte_flow rules) with their rollback.

use std::ffi::CStr;

use dpdk_sys as sys;

use super::super::eal::strerror;
use super::super::port::port_socket;
use super::flow::flow_error;
use super::offload::offload_names;
use super::{CtlPort, Flow, Parked};
use crate::nic::dpdk::{
    ethtool_name, hex, rss_names, Offload, PortFlow, PortLink, PortOp, PortQueues, PortReport,
    PortRings, PortRss,
};
use crate::nic::plan::RssWant;
use crate::nic::show::Part;
use crate::nic::sys::weighted_table;
use crate::nic::NicError;

/// An error from a DPDK call on a port: unsupported by the PMD, or failed, naming the item.
pub(super) fn dpdk_err(p: &CtlPort, driver: &str, item: &str, api: &str, rc: i32) -> NicError {
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

pub(super) fn dev_info(id: u16) -> Result<sys::rte_eth_dev_info, NicError> {
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

pub(super) fn driver_name(info: &sys::rte_eth_dev_info) -> String {
    if info.driver_name.is_null() {
        return "unknown".into();
    }
    // SAFETY: DPDK points driver_name at the driver's static NUL-terminated name.
    unsafe { CStr::from_ptr(info.driver_name) }
        .to_string_lossy()
        .into_owned()
}

pub(super) fn conf_get(id: u16) -> Result<sys::rte_eth_conf, i32> {
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

impl CtlPort {
    pub(super) fn report(&self, owner: &str) -> Result<PortReport, NicError> {
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

    pub(super) fn current_desc(&self) -> (u16, u16) {
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

    pub(super) fn apply(&mut self, op: PortOp, workers: usize) -> Result<String, NicError> {
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
}
