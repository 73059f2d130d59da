//! The sysfs/procfs side: IRQs and their CPU affinity, per-queue XPS/RPS masks, the
//! `net.core.busy_poll`/`busy_read` sysctls, hugepage pools, and vfio-pci (re)binding with
//! the previous driver remembered in a state file.
//!
//! Reads never change anything; each write touches one file and reports the file it
//! could not write. CPU sets are held as sorted sets and written in the kernel's own
//! formats (hex masks in 32-bit comma groups; `0-3,5` lists), so a read-back compares
//! equal to what was written.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::NicError;

fn read_trim(p: &Path) -> Result<String, NicError> {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| NicError::from_io(&format!("reading {}", p.display()), e))
}

fn write(p: &Path, v: &str) -> Result<(), NicError> {
    fs::write(p, v).map_err(|e| NicError::from_io(&format!("writing `{v}` to {}", p.display()), e))
}

// === CPU sets ===

pub type Cpus = BTreeSet<u32>;

/// Parse a CPU list (`0-3,5`; empty is the empty set).
pub fn parse_cpu_list(s: &str) -> Result<Cpus, NicError> {
    let bad = || NicError::Invalid(format!("`{s}` is not a CPU list (write e.g. 0-3,6)"));
    let mut out = Cpus::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let (a, b): (u32, u32) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b || b >= 8192 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    Ok(out)
}

pub fn format_cpu_list(c: &Cpus) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = c.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Parse the kernel's hex CPU mask (`00000000,0000000f`).
pub fn parse_cpu_mask(s: &str) -> Result<Cpus, NicError> {
    let bad = || NicError::Invalid(format!("`{s}` is not a hex CPU mask"));
    let mut out = Cpus::new();
    let groups: Vec<&str> = s.trim().split(',').collect();
    for (gi, g) in groups.iter().rev().enumerate() {
        let v = u32::from_str_radix(g, 16).map_err(|_| bad())?;
        for bit in 0..32 {
            if v & (1 << bit) != 0 {
                out.insert(gi as u32 * 32 + bit);
            }
        }
    }
    Ok(out)
}

pub fn format_cpu_mask(c: &Cpus) -> String {
    let top = c.iter().next_back().map_or(0, |&m| m / 32);
    (0..=top)
        .rev()
        .map(|g| {
            let v = c
                .iter()
                .filter(|&&x| x / 32 == g)
                .fold(0u32, |acc, &x| acc | (1 << (x % 32)));
            format!("{v:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// CPUs this host has (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> Cpus {
    read_trim(Path::new("/sys/devices/system/cpu/possible"))
        .ok()
        .and_then(|s| parse_cpu_list(&s).ok())
        .unwrap_or_default()
}

pub fn check_cpus(c: &Cpus) -> Result<(), NicError> {
    let have = possible_cpus();
    if let Some(x) = c.iter().find(|x| !have.is_empty() && !have.contains(x)) {
        return Err(NicError::Invalid(format!(
            "CPU {x} does not exist here (CPUs: {})",
            format_cpu_list(&have)
        )));
    }
    Ok(())
}

// === queues: RPS / XPS ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QueueMask {
    Rps,
    Xps,
}

impl QueueMask {
    pub fn name(self) -> &'static str {
        match self {
            QueueMask::Rps => "rps",
            QueueMask::Xps => "xps",
        }
    }
    fn path(self, dev: &str, q: u32) -> PathBuf {
        let base = Path::new("/sys/class/net").join(dev).join("queues");
        match self {
            QueueMask::Rps => base.join(format!("rx-{q}/rps_cpus")),
            QueueMask::Xps => base.join(format!("tx-{q}/xps_cpus")),
        }
    }
}

pub fn queue_count(dev: &str, kind: QueueMask) -> u32 {
    let prefix = match kind {
        QueueMask::Rps => "rx-",
        QueueMask::Xps => "tx-",
    };
    fs::read_dir(Path::new("/sys/class/net").join(dev).join("queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count() as u32
        })
        .unwrap_or(0)
}

pub fn read_queue_mask(dev: &str, kind: QueueMask, q: u32) -> Result<Cpus, NicError> {
    let p = kind.path(dev, q);
    if !p.exists() {
        return Err(NicError::Invalid(format!(
            "{dev} has no {} queue {q} ({} queues)",
            kind.name(),
            queue_count(dev, kind)
        )));
    }
    parse_cpu_mask(&read_trim(&p)?)
}

pub fn write_queue_mask(dev: &str, kind: QueueMask, q: u32, c: &Cpus) -> Result<(), NicError> {
    write(&kind.path(dev, q), &format_cpu_mask(c))
}

// === IRQs ===

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Irq {
    pub irq: u32,
    pub name: String,
    /// The queue index its name ends with (`eth0-TxRx-3`, `virtio2-input.0`), if any.
    pub queue: Option<u32>,
    pub affinity: String,
}

fn irq_names() -> Vec<(u32, String)> {
    let Ok(text) = fs::read_to_string("/proc/interrupts") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (n, rest) = l.trim_start().split_once(':')?;
            let irq: u32 = n.parse().ok()?;
            let name = rest.split_whitespace().last()?.to_string();
            Some((irq, name))
        })
        .collect()
}

fn trailing_index(name: &str) -> Option<u32> {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if digits.is_empty() || digits.len() == name.len() {
        return None;
    }
    let sep = name[..name.len() - digits.len()].chars().last()?;
    matches!(sep, '-' | '.' | '_')
        .then(|| digits.chars().rev().collect::<String>().parse().ok())
        .flatten()
}

/// The device's MSI/MSI-X interrupts (none for virtual devices such as veth).
pub fn irqs(dev: &str) -> Vec<Irq> {
    let devdir = Path::new("/sys/class/net").join(dev).join("device");
    let mut nums: Vec<u32> = [devdir.join("msi_irqs"), devdir.join("../msi_irqs")]
        .iter()
        .find_map(|d| fs::read_dir(d).ok())
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nums.sort_unstable();
    let names = irq_names();
    nums.into_iter()
        .map(|irq| {
            let name = names
                .iter()
                .find(|(n, _)| *n == irq)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            Irq {
                irq,
                queue: trailing_index(&name),
                affinity: read_irq_affinity(irq)
                    .map(|c| format_cpu_list(&c))
                    .unwrap_or_default(),
                name,
            }
        })
        .collect()
}

/// The IRQs serving queue `q` of `dev`.
pub fn queue_irqs(dev: &str, q: u32) -> Result<Vec<u32>, NicError> {
    let all = irqs(dev);
    if all.is_empty() {
        return Err(NicError::Invalid(format!(
            "{dev} has no MSI interrupts of its own (a virtual device?): no IRQ affinity to set"
        )));
    }
    let v: Vec<u32> = all
        .iter()
        .filter(|i| i.queue == Some(q))
        .map(|i| i.irq)
        .collect();
    if v.is_empty() {
        return Err(NicError::Invalid(format!("{dev} has no IRQ for queue {q}")));
    }
    Ok(v)
}

pub fn read_irq_affinity(irq: u32) -> Result<Cpus, NicError> {
    parse_cpu_list(&read_trim(&PathBuf::from(format!(
        "/proc/irq/{irq}/smp_affinity_list"
    )))?)
}

pub fn write_irq_affinity(irq: u32, c: &Cpus) -> Result<(), NicError> {
    write(
        &PathBuf::from(format!("/proc/irq/{irq}/smp_affinity_list")),
        &format_cpu_list(c),
    )
}

// === sysctls ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Sysctl {
    BusyPoll,
    BusyRead,
}

impl Sysctl {
    pub fn name(self) -> &'static str {
        match self {
            Sysctl::BusyPoll => "net.core.busy_poll",
            Sysctl::BusyRead => "net.core.busy_read",
        }
    }
    fn path(self) -> PathBuf {
        PathBuf::from("/proc/sys").join(self.name().replace('.', "/"))
    }
    pub fn read(self) -> Result<u32, NicError> {
        let p = self.path();
        if !p.exists() {
            return Err(NicError::Unsupported(format!(
                "{} is not visible here: it is a host-wide sysctl that only the initial network namespace shows",
                self.name()
            )));
        }
        let s = read_trim(&p)?;
        s.parse()
            .map_err(|_| NicError::Io(format!("{}: unexpected value `{s}`", self.name())))
    }
    pub fn write(self, v: u32) -> Result<(), NicError> {
        self.read()?;
        write(&self.path(), &v.to_string())
    }
}

// === hugepages ===

/// Parse `2M`, `1G`, `2048kB` into kB.
pub fn parse_page_size(s: &str) -> Result<u64, NicError> {
    let bad = || NicError::Invalid(format!("`{s}` is not a hugepage size (write 2M or 1G)"));
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("kB").or_else(|| t.strip_suffix("K")) {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('M') {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix('G') {
        (n, 1024 * 1024)
    } else {
        return Err(bad());
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(n * mult)
}

pub fn page_size_name(kb: u64) -> String {
    if kb % (1024 * 1024) == 0 {
        format!("{}G", kb / (1024 * 1024))
    } else if kb % 1024 == 0 {
        format!("{}M", kb / 1024)
    } else {
        format!("{kb}kB")
    }
}

fn hugepage_dir(kb: u64) -> PathBuf {
    PathBuf::from(format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB"))
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HugePool {
    pub size: String,
    pub total: u64,
    pub free: u64,
}

pub fn hugepage_sizes() -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

pub fn hugepages() -> Vec<HugePool> {
    hugepage_sizes()
        .into_iter()
        .map(|kb| HugePool {
            size: page_size_name(kb),
            total: read_hugepages(kb).unwrap_or(0),
            free: read_trim(&hugepage_dir(kb).join("free_hugepages"))
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        })
        .collect()
}

pub fn read_hugepages(kb: u64) -> Result<u64, NicError> {
    let d = hugepage_dir(kb);
    if !d.exists() {
        let have: Vec<String> = hugepage_sizes().into_iter().map(page_size_name).collect();
        return Err(NicError::Invalid(format!(
            "this host has no {} hugepages (sizes: {})",
            page_size_name(kb),
            have.join(", ")
        )));
    }
    let s = read_trim(&d.join("nr_hugepages"))?;
    s.parse()
        .map_err(|_| NicError::Io(format!("nr_hugepages: unexpected value `{s}`")))
}

/// Ask for `n` pages; the kernel may reserve fewer (fragmented memory), which is an error
/// saying how many it got.
pub fn write_hugepages(kb: u64, n: u64) -> Result<(), NicError> {
    read_hugepages(kb)?;
    write(&hugepage_dir(kb).join("nr_hugepages"), &n.to_string())?;
    let got = read_hugepages(kb)?;
    if got != n {
        return Err(NicError::Io(format!(
            "asked for {n} {} hugepages, the kernel reserved {got} (not enough contiguous free memory)",
            page_size_name(kb)
        )));
    }
    Ok(())
}

// === vfio-pci binding ===

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub pci: String,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<String>,
}

const PCI: &str = "/sys/bus/pci/devices";

/// The PCI address behind a network device, or an error saying it has none.
pub fn pci_address(dev: &str) -> Result<String, NicError> {
    let link = Path::new("/sys/class/net").join(dev).join("device");
    let real = fs::canonicalize(&link).map_err(|_| {
        NicError::Invalid(format!(
            "{dev} is not backed by a PCI device (virtual device?)"
        ))
    })?;
    let sub = fs::canonicalize(real.join("subsystem")).unwrap_or_default();
    if !sub.ends_with("bus/pci") {
        return Err(NicError::Invalid(format!(
            "{dev} sits on {} rather than PCI: it cannot be bound to vfio-pci",
            sub.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "no bus".into())
        )));
    }
    Ok(real
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// Accept `0000:03:00.0`-style addresses only (what sysfs names).
pub fn check_pci(addr: &str) -> Result<(), NicError> {
    let ok = addr.len() == 12
        && addr.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b':',
            10 => b == b'.',
            _ => b.is_ascii_hexdigit(),
        });
    if ok && Path::new(PCI).join(addr).exists() {
        Ok(())
    } else if ok {
        Err(NicError::Invalid(format!("no PCI device {addr}")))
    } else {
        Err(NicError::Invalid(format!(
            "`{addr}` is not a PCI address like 0000:03:00.0"
        )))
    }
}

pub fn binding(pci: &str) -> Binding {
    let d = Path::new(PCI).join(pci);
    let base = |p: PathBuf| {
        fs::read_link(p)
            .ok()
            .and_then(|l| l.file_name().map(|s| s.to_string_lossy().into_owned()))
    };
    Binding {
        pci: pci.to_string(),
        driver: base(d.join("driver")),
        driver_override: read_trim(&d.join("driver_override"))
            .ok()
            .filter(|s| !s.is_empty() && s != "(null)"),
        iommu_group: base(d.join("iommu_group")),
    }
}

/// Where `bind` remembers each device's previous driver.
pub fn state_file() -> PathBuf {
    std::env::var_os("TICKMESH_NIC_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/tickmesh/nic-bindings.json"))
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindState {
    /// PCI address → (interface name before binding, previous driver).
    pub devices: std::collections::BTreeMap<String, Remembered>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remembered {
    pub ifname: Option<String>,
    pub driver: String,
}

pub fn load_state(p: &Path) -> Result<BindState, NicError> {
    match fs::read_to_string(p) {
        Ok(s) => serde_json::from_str(&s)
            .map_err(|e| NicError::Invalid(format!("{}: corrupt binding state: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BindState::default()),
        Err(e) => Err(NicError::from_io(&format!("reading {}", p.display()), e)),
    }
}

pub fn save_state(p: &Path, s: &BindState) -> Result<(), NicError> {
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| NicError::from_io(&format!("creating {}", dir.display()), e))?;
    }
    let tmp = p.with_extension("tmp");
    // serde_json cannot fail on this plain map of strings.
    let text = serde_json::to_string_pretty(s).unwrap_or_default();
    fs::write(&tmp, text)
        .map_err(|e| NicError::from_io(&format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, p).map_err(|e| NicError::from_io(&format!("renaming to {}", p.display()), e))
}

/// Bind the device (interface name or PCI address) to `driver` (normally vfio-pci),
/// remembering the driver it had.
pub fn bind(target: &str, driver: &str) -> Result<String, NicError> {
    let (pci, ifname) = if check_pci(target).is_ok() {
        (target.to_string(), None)
    } else {
        super::require_device(target)?;
        (pci_address(target)?, Some(target.to_string()))
    };
    let drv_dir = Path::new("/sys/bus/pci/drivers").join(driver);
    if !drv_dir.exists() {
        return Err(NicError::Unsupported(format!(
            "driver {driver} is not loaded (load it first: the vfio-pci module)"
        )));
    }
    let now = binding(&pci);
    if now.driver.as_deref() == Some(driver) {
        return Ok(format!("{pci} is already bound to {driver}"));
    }
    let sp = state_file();
    let mut st = load_state(&sp)?;
    if let Some(prev) = &now.driver {
        st.devices.insert(
            pci.clone(),
            Remembered {
                ifname: ifname.clone(),
                driver: prev.clone(),
            },
        );
        save_state(&sp, &st)?;
    }
    let d = Path::new(PCI).join(&pci);
    write(&d.join("driver_override"), driver)?;
    if now.driver.is_some() {
        write(&d.join("driver/unbind"), &pci)?;
    }
    if let Err(e) = write(&drv_dir.join("bind"), &pci) {
        // Put the device back where it was before reporting.
        let _ = write(&d.join("driver_override"), "\n");
        if let Some(prev) = &now.driver {
            let _ = write(
                &Path::new("/sys/bus/pci/drivers").join(prev).join("bind"),
                &pci,
            );
        }
        return Err(e);
    }
    Ok(format!(
        "{pci} bound to {driver} (was {})",
        now.driver.as_deref().unwrap_or("unbound")
    ))
}

/// Give the device back to the driver it had before `bind`.
pub fn unbind(target: &str) -> Result<String, NicError> {
    let sp = state_file();
    let mut st = load_state(&sp)?;
    let pci = if check_pci(target).is_ok() {
        target.to_string()
    } else {
        st.devices
            .iter()
            .find(|(_, r)| r.ifname.as_deref() == Some(target))
            .map(|(p, _)| p.clone())
            .ok_or_else(|| {
                NicError::Invalid(format!(
                    "no binding remembered for `{target}` in {} (give the PCI address)",
                    sp.display()
                ))
            })?
    };
    let prev = st.devices.get(&pci).cloned().ok_or_else(|| {
        NicError::Invalid(format!(
            "no previous driver remembered for {pci} in {}",
            sp.display()
        ))
    })?;
    let d = Path::new(PCI).join(&pci);
    write(&d.join("driver_override"), "\n")?;
    if d.join("driver").exists() {
        write(&d.join("driver/unbind"), &pci)?;
    }
    write(
        &Path::new("/sys/bus/pci/drivers")
            .join(&prev.driver)
            .join("bind"),
        &pci,
    )?;
    st.devices.remove(&pci);
    save_state(&sp, &st)?;
    Ok(format!("{pci} returned to {}", prev.driver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_masks_round_trip() {
        let c = parse_cpu_list("0-3,5,7-8").unwrap();
        assert_eq!(format_cpu_list(&c), "0-3,5,7-8");
        assert_eq!(format_cpu_mask(&c), "000001af");
        assert_eq!(parse_cpu_mask("000001af").unwrap(), c);
        let big: Cpus = [0, 33].into_iter().collect();
        assert_eq!(format_cpu_mask(&big), "00000002,00000001");
        assert_eq!(parse_cpu_mask("00000002,00000001").unwrap(), big);
        assert_eq!(parse_cpu_mask("0").unwrap(), Cpus::new());
        assert_eq!(format_cpu_list(&Cpus::new()), "");
        for bad in ["a", "3-1", "1-", "99999", "1,,x"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        assert!(parse_cpu_mask("xyz").is_err());
    }

    #[test]
    fn page_sizes_parse() {
        assert_eq!(parse_page_size("2M").unwrap(), 2048);
        assert_eq!(parse_page_size("1G").unwrap(), 1048576);
        assert_eq!(parse_page_size("2048kB").unwrap(), 2048);
        assert_eq!(page_size_name(2048), "2M");
        assert_eq!(page_size_name(1048576), "1G");
        for bad in ["", "2", "M", "0M", "2T", "-2M"] {
            assert!(parse_page_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn queue_index_comes_from_the_irq_name() {
        assert_eq!(trailing_index("virtio2-input.0"), Some(0));
        assert_eq!(trailing_index("eth0-TxRx-13"), Some(13));
        assert_eq!(trailing_index("virtio2-config"), None);
        assert_eq!(trailing_index("42"), None);
    }

    #[test]
    fn pci_addresses_are_checked() {
        for bad in ["", "03:00.0", "0000:03:00:0", "zzzz:03:00.0"] {
            assert!(
                check_pci(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("not a PCI address"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn binding_state_survives_a_round_trip_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        assert!(load_state(&p).unwrap().devices.is_empty());
        let mut s = BindState::default();
        s.devices.insert(
            "0000:03:00.0".into(),
            Remembered {
                ifname: Some("eth1".into()),
                driver: "ixgbe".into(),
            },
        );
        save_state(&p, &s).unwrap();
        let back = load_state(&p).unwrap();
        assert_eq!(back.devices["0000:03:00.0"].driver, "ixgbe");
        fs::write(&p, "{\"devices\": {}, \"extra\": 1}").unwrap();
        assert!(load_state(&p).unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn random_cpu_lists_and_masks_never_panic_and_round_trip() {
        let mut rng = crate::nic::TestRng(0x5eed_0000_0000_0005);
        let alphabet = b"0123456789abcdef,-x ";
        for _ in 0..5000 {
            let s: String = (0..rng.below(12))
                .map(|_| alphabet[rng.below(alphabet.len())] as char)
                .collect();
            if let Ok(c) = parse_cpu_list(&s) {
                assert_eq!(parse_cpu_list(&format_cpu_list(&c)).unwrap(), c, "{s:?}");
                assert_eq!(parse_cpu_mask(&format_cpu_mask(&c)).unwrap(), c, "{s:?}");
            }
            let _ = parse_cpu_mask(&s);
            let _ = parse_page_size(&s);
        }
    }
}
