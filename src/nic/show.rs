//! `tickmesh nic show`: everything about a device and the host in one report, as text or
//! JSON. Read-only. A part the driver does not support is reported as such, never as an
//! error that hides the rest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::features::{glob, GROUPS};
use super::genl::{Channels, Feature, LinkInfo, Rings, CHANNEL_NAMES, RING_NAMES};
use super::host::{self, Binding, HugePool, Irq, QueueMask};
use super::plan::{summarize_table, Ctx};
use super::sys::{self, DrvInfo, FlowRule, Rss};
use super::NicError;

/// A part of the report: its value, or why there is none.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Part<T> {
    Value(T),
    Missing { unavailable: String },
}

impl<T> Part<T> {
    fn of(r: Result<T, NicError>) -> Self {
        match r {
            Ok(v) => Part::Value(v),
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Part::Missing {
                unavailable: "not supported by the driver".into(),
            },
            Err(e) => Part::Missing {
                unavailable: e.to_string(),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct QueueCpus {
    pub queue: u32,
    pub cpus: String,
}

#[derive(Debug, Serialize)]
pub struct DeviceReport {
    pub name: String,
    pub driver: Part<DrvInfo>,
    pub link: Part<LinkInfo>,
    pub features: Part<Vec<Feature>>,
    pub channels: Part<Channels>,
    pub rings: Part<Rings>,
    pub coalesce: Part<BTreeMap<String, u32>>,
    pub rss: Part<Rss>,
    pub ntuple_rules: Part<Vec<FlowRule>>,
    pub irqs: Vec<Irq>,
    pub rps: Vec<QueueCpus>,
    pub xps: Vec<QueueCpus>,
    pub pci: Option<Binding>,
}

#[derive(Debug, Serialize)]
pub struct HostReport {
    pub busy_poll: Part<u32>,
    pub busy_read: Part<u32>,
    pub hugepages: Vec<HugePool>,
    pub vfio_pci_loaded: bool,
    pub vfio_pci_devices: Vec<Binding>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: Vec<DeviceReport>,
    pub host: HostReport,
    /// Ports of a running DPDK engine (`nic show` without a device, when one answers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dpdk_ports: Vec<super::dpdk::PortReport>,
}

fn queues(dev: &str, kind: QueueMask) -> Vec<QueueCpus> {
    (0..host::queue_count(dev, kind))
        .filter_map(|q| {
            host::read_queue_mask(dev, kind, q).ok().map(|c| QueueCpus {
                queue: q,
                cpus: host::format_cpu_list(&c),
            })
        })
        .collect()
}

pub fn device(cx: &mut Ctx, dev: &str) -> Result<DeviceReport, NicError> {
    super::require_device(dev)?;
    let et = cx.et()?;
    Ok(DeviceReport {
        name: dev.to_string(),
        driver: Part::of(sys::drvinfo(dev)),
        link: Part::of(et.link(dev)),
        features: Part::of(et.features(dev)),
        channels: Part::of(et.channels(dev)),
        rings: Part::of(et.rings(dev)),
        coalesce: Part::of(et.coalesce(dev)),
        rss: Part::of(sys::rss(dev)),
        ntuple_rules: Part::of(sys::flows(dev)),
        irqs: host::irqs(dev),
        rps: queues(dev, QueueMask::Rps),
        xps: queues(dev, QueueMask::Xps),
        pci: host::pci_address(dev).ok().map(|p| host::binding(&p)),
    })
}

pub fn host_report() -> HostReport {
    let vfio = std::path::Path::new("/sys/bus/pci/drivers/vfio-pci");
    let bound = std::fs::read_dir(vfio)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| host::check_pci(n).is_ok())
                .map(|n| host::binding(&n))
                .collect()
        })
        .unwrap_or_default();
    HostReport {
        busy_poll: Part::of(host::Sysctl::BusyPoll.read()),
        busy_read: Part::of(host::Sysctl::BusyRead.read()),
        hugepages: host::hugepages(),
        vfio_pci_loaded: vfio.exists(),
        vfio_pci_devices: bound,
    }
}

/// Every interface in this network namespace but `lo`, sorted.
pub fn all_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn report(cx: &mut Ctx, dev: Option<&str>) -> Result<Report, NicError> {
    let names = match dev {
        Some(d) => vec![d.to_string()],
        None => all_devices(),
    };
    let mut devices = Vec::new();
    for n in &names {
        devices.push(device(cx, n)?);
    }
    Ok(Report {
        devices,
        host: host_report(),
        dpdk_ports: Vec::new(),
    })
}

// === text ===

fn missing<T>(p: &Part<T>) -> Option<&str> {
    match p {
        Part::Value(_) => None,
        Part::Missing { unavailable } => Some(unavailable),
    }
}

fn feature_line(out: &mut String, indent: &str, name: &str, on: bool, fixed: bool) {
    let _ = writeln!(
        out,
        "{indent}{name}: {}{}",
        if on { "on" } else { "off" },
        if fixed { " [fixed]" } else { "" }
    );
}

fn features_text(out: &mut String, f: &[Feature]) {
    let mut shown = vec![false; f.len()];
    for (_, long, pat) in GROUPS {
        let idx: Vec<usize> = (0..f.len()).filter(|&i| glob(pat, &f[i].name)).collect();
        if idx.is_empty() {
            continue;
        }
        if idx.len() == 1 && f[idx[0]].name == *pat {
            let x = &f[idx[0]];
            feature_line(out, "    ", long, x.active, !x.changeable);
            shown[idx[0]] = true;
            continue;
        }
        let on = idx.iter().any(|&i| f[i].active);
        let fixed = idx.iter().all(|&i| !f[i].changeable);
        feature_line(out, "    ", long, on, fixed);
        for i in idx {
            feature_line(out, "        ", &f[i].name, f[i].active, !f[i].changeable);
            shown[i] = true;
        }
    }
    for (i, x) in f.iter().enumerate() {
        if !shown[i] {
            feature_line(out, "    ", &x.name, x.active, !x.changeable);
        }
    }
}

fn counts_line(names: &[&str; 4], max: &[Option<u32>; 4], cur: &[Option<u32>; 4]) -> String {
    (0..4)
        .filter(|&i| max[i].is_some() || cur[i].is_some())
        .map(|i| {
            format!(
                "{} {}/{}",
                names[i],
                cur[i].map_or("-".into(), |v| v.to_string()),
                max[i].map_or("-".into(), |v| v.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn text(r: &Report) -> String {
    let mut o = String::new();
    for d in &r.devices {
        let _ = write!(o, "{}:", d.name);
        if let Part::Value(i) = &d.driver {
            let _ = write!(o, " driver {} {}", i.driver, i.version);
            if !i.bus_info.is_empty() {
                let _ = write!(o, ", bus {}", i.bus_info);
            }
        }
        if let Part::Value(l) = &d.link {
            let _ = write!(
                o,
                ", link {}",
                match l.link_up {
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "unknown",
                }
            );
            if let Some(s) = l.speed_mbps {
                let _ = write!(o, " {s} Mb/s");
            }
            if let Some(dx) = l.duplex {
                let _ = write!(o, " {dx} duplex");
            }
        }
        o.push('\n');
        match &d.channels {
            Part::Value(c) => {
                let _ = writeln!(
                    o,
                    "  channels (current/max): {}",
                    counts_line(&CHANNEL_NAMES, &c.max, &c.count)
                );
            }
            Part::Missing { unavailable } => {
                let _ = writeln!(o, "  channels: {unavailable}");
            }
        }
        match &d.rings {
            Part::Value(r) => {
                let _ = writeln!(
                    o,
                    "  rings (current/max): {}",
                    counts_line(&RING_NAMES, &r.max, &r.count)
                );
            }
            Part::Missing { unavailable } => {
                let _ = writeln!(o, "  rings: {unavailable}");
            }
        }
        match &d.coalesce {
            Part::Value(c) => {
                let s: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(o, "  coalesce: {}", s.join(", "));
            }
            Part::Missing { unavailable } => {
                let _ = writeln!(o, "  coalesce: {unavailable}");
            }
        }
        match &d.rss {
            Part::Value(r) => {
                if r.indirection.is_empty() {
                    let _ = writeln!(o, "  rss: {} rx rings, no indirection table", r.rx_rings);
                } else {
                    let _ = writeln!(
                        o,
                        "  rss: {} rx rings, indirection table {} entries ({}), hash key {}",
                        r.rx_rings,
                        r.indirection.len(),
                        summarize_table(&r.indirection),
                        if r.hash_key.is_empty() {
                            "-"
                        } else {
                            &r.hash_key
                        }
                    );
                }
            }
            Part::Missing { unavailable } => {
                let _ = writeln!(o, "  rss: {unavailable}");
            }
        }
        match &d.ntuple_rules {
            Part::Value(v) if v.is_empty() => o.push_str("  ntuple rules: none\n"),
            Part::Value(v) => {
                o.push_str("  ntuple rules:\n");
                for r in v {
                    let _ = writeln!(
                        o,
                        "    loc {}: {:?} src {} dst {} sport {} dport {} -> {}",
                        r.location.unwrap_or(0),
                        r.flow_type,
                        r.src_ip.map_or("*".into(), |a| a.to_string()),
                        r.dst_ip.map_or("*".into(), |a| a.to_string()),
                        r.src_port.map_or("*".into(), |p| p.to_string()),
                        r.dst_port.map_or("*".into(), |p| p.to_string()),
                        r.queue.map_or("drop".into(), |q| format!("queue {q}"))
                    );
                }
            }
            Part::Missing { unavailable } => {
                let _ = writeln!(o, "  ntuple rules: {unavailable}");
            }
        }
        if d.irqs.is_empty() {
            o.push_str("  irqs: none of its own (virtual device or legacy interrupt)\n");
        } else {
            o.push_str("  irqs:\n");
            for i in &d.irqs {
                let _ = writeln!(
                    o,
                    "    {} {} queue {} cpus {}",
                    i.irq,
                    i.name,
                    i.queue.map_or("-".into(), |q| q.to_string()),
                    i.affinity
                );
            }
        }
        for (name, v) in [("rps", &d.rps), ("xps", &d.xps)] {
            let s: Vec<String> = v
                .iter()
                .map(|q| {
                    format!(
                        "{}:{}",
                        q.queue,
                        if q.cpus.is_empty() { "-" } else { &q.cpus }
                    )
                })
                .collect();
            let s = if s.is_empty() {
                "unavailable".to_string()
            } else {
                s.join(" ")
            };
            let _ = writeln!(o, "  {name} (queue:cpus): {s}");
        }
        if let Some(b) = &d.pci {
            let _ = writeln!(
                o,
                "  pci {}: driver {}, iommu group {}",
                b.pci,
                b.driver.as_deref().unwrap_or("none"),
                b.iommu_group.as_deref().unwrap_or("none")
            );
        }
        match &d.features {
            Part::Value(f) => {
                o.push_str("  features:\n");
                features_text(&mut o, f);
            }
            Part::Missing { unavailable } => {
                let _ = writeln!(o, "  features: {unavailable}");
            }
        }
    }
    let h = &r.host;
    o.push_str("host:\n");
    for (name, p) in [
        ("net.core.busy_poll", &h.busy_poll),
        ("net.core.busy_read", &h.busy_read),
    ] {
        match p {
            Part::Value(v) => {
                let _ = writeln!(o, "  {name} = {v}");
            }
            Part::Missing { .. } => {
                let _ = writeln!(o, "  {name}: {}", missing(p).unwrap_or_default());
            }
        }
    }
    for p in &h.hugepages {
        let _ = writeln!(o, "  hugepages {}: {} ({} free)", p.size, p.total, p.free);
    }
    let _ = writeln!(
        o,
        "  vfio-pci: {}",
        if h.vfio_pci_loaded {
            "loaded"
        } else {
            "not loaded"
        }
    );
    for b in &h.vfio_pci_devices {
        let _ = writeln!(o, "    {} bound to vfio-pci", b.pci);
    }
    o
}
