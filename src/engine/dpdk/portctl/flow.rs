//! rte_flow rules for `flow add`: a 5-tuple pattern steered to a queue or dropped.

use std::ffi::CStr;

use dpdk_sys as sys;

use super::super::eal::strerror;
use super::CtlPort;
use crate::nic::sys::{FlowRule, FlowType};
use crate::nic::NicError;

/// A flow item spec or mask: a protocol header's bytes in wire order, zero-padded to the
/// largest `rte_flow_item_*` struct we use (`rte_flow_item_ipv6` is 44 bytes).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ItemBytes([u8; 64]);

impl CtlPort {
    /// Validate then create `eth / ipv4|ipv6 / tcp|udp → queue|drop` for `rule`.
    pub(super) fn flow_create(
        &self,
        rule: &FlowRule,
        driver: &str,
    ) -> Result<*mut sys::rte_flow, NicError> {
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

pub(super) fn flow_error(err: &sys::rte_flow_error, rc: i32) -> String {
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
