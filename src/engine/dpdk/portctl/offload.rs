//! Offload toggles on a DPDK port: ethtool's words resolved to the PMD's offload bits.

use std::ffi::CStr;

use dpdk_sys as sys;

use super::ctl::{conf_get, dpdk_err};
use super::CtlPort;
use crate::nic::dpdk::offload_targets;
use crate::nic::NicError;

impl CtlPort {
    /// The port's RX and TX offload masks after `words`, each naming offloads the PMD must
    /// offer; a group changes the members it offers, as `ethtool -K` does.
    pub(super) fn offload_edit(
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
pub(super) fn offload_names(rx: bool, mask: u64) -> String {
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
