//! `tickmesh nic`: the host's NIC tuning in ethtool's vocabulary — offload features,
//! channels, rings, coalescing, RSS, ntuple steering, IRQ affinity, XPS/RPS, busy polling,
//! hugepages and vfio-pci binding — shown, set one at a time, or applied from a
//! declarative profile with a dry-run diff and transactional rollback.
//!
//! It talks to the kernel only: the ethtool generic netlink family (`genl`), the classic
//! `SIOCETHTOOL` ioctl where netlink has no command (`sys`: driver info, RSS, ntuple), and
//! sysfs/procfs (`host`). It never shells out to `ethtool`, never runs on a worker thread,
//! and never leaves a change half-made: every change is a `plan::Step` whose previous value
//! is recorded before it is written and restored, newest first, when a later step fails.
//! Ports owned by DPDK (`dpdk:NAME`) take the same `show`/`set` verbs through `dpdk`,
//! which asks the DPDK engine that owns the port (or opens it itself).

pub mod cli;
pub mod dpdk;
pub mod features;
pub mod genl;
pub mod host;
pub mod plan;
pub mod profile;
pub mod show;
pub mod sys;

pub use cli::{run, NicArgs};

/// For the daemon: apply a profile (a file or a shipped name) at start, transactionally.
/// Returns a line per change made.
pub fn apply_profile(path: &str, devs: &[String]) -> anyhow::Result<Vec<String>> {
    let mut cx = plan::Ctx::default();
    let (steps, mut notes) = plan::drop_unsupported(profile::load(path)?.plan(devs)?, &mut cx);
    notes.extend(plan::apply(&steps, &mut cx)?);
    Ok(notes)
}

/// For the daemon: where the host differs from a profile now (drift), one line per
/// setting (`~` differs, `!` cannot be read). Empty when the host matches. Read-only.
pub fn drift(path: &str, devs: &[String]) -> anyhow::Result<Vec<String>> {
    let mut cx = plan::Ctx::default();
    let (steps, _) = plan::drop_unsupported(profile::load(path)?.plan(devs)?, &mut cx);
    let (text, _) = plan::diff(&steps, &mut cx);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('='))
        .map(String::from)
        .collect())
}

/// What went wrong talking to the kernel, with the item it concerns named by the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NicError {
    #[error("{0}")]
    Io(String),
    #[error("{}", kernel_text(*errno, detail.as_deref()))]
    Kernel { errno: i32, detail: Option<String> },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

impl NicError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NicError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
    /// Whether the driver simply lacks the operation (so `show` prints "not supported").
    pub fn is_unsupported(&self) -> bool {
        matches!(self, NicError::Unsupported(_)) || matches!(self.errno(), Some(libc::EOPNOTSUPP))
    }
    pub fn from_io(what: &str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => NicError::Kernel {
                errno,
                detail: Some(what.to_string()),
            },
            None => NicError::Io(format!("{what}: {e}")),
        }
    }
}

fn kernel_text(errno: i32, detail: Option<&str>) -> String {
    let base = match errno {
        libc::EPERM => "insufficient privilege: this needs CAP_NET_ADMIN (run as root)".to_string(),
        libc::EACCES => "permission denied: this needs root".to_string(),
        libc::EOPNOTSUPP => "the driver does not support this".to_string(),
        libc::ENODEV => "no such device".to_string(),
        libc::EINVAL => "the kernel rejected the value (invalid or out of range)".to_string(),
        libc::EBUSY => "the device is busy".to_string(),
        _ => std::io::Error::from_raw_os_error(errno).to_string(),
    };
    match detail {
        Some(d) if !d.is_empty() => format!("{base}: {d}"),
        _ => base,
    }
}

/// Interface names as the kernel accepts them: 1–15 bytes, no '/', ':' or whitespace.
pub fn check_ifname(dev: &str) -> Result<(), NicError> {
    let ok = !dev.is_empty()
        && dev.len() < 16
        && dev != "."
        && dev != ".."
        && !dev
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else if dev.starts_with(dpdk::PREFIX) {
        Err(NicError::Invalid(format!(
            "`{dev}` is a DPDK port: `nic show` and `nic set` take it; profiles, busy-poll,              IRQ and binding verbs cover kernel interfaces only"
        )))
    } else {
        Err(NicError::Invalid(format!(
            "`{dev}` is not a valid interface name"
        )))
    }
}

/// The device must exist in this network namespace.
pub fn require_device(dev: &str) -> Result<(), NicError> {
    check_ifname(dev)?;
    if std::path::Path::new("/sys/class/net").join(dev).exists() {
        Ok(())
    } else {
        Err(NicError::Invalid(format!(
            "unknown device `{dev}` (see `ip link` for the devices in this network namespace)"
        )))
    }
}

/// A seeded xorshift generator for the malformed-input tests (no wall clock, no crate).
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// `base` with a few bytes replaced, inserted or deleted.
    pub fn mutate(&mut self, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(v.len() + 1);
            let b = self.next() as u8;
            match self.below(3) {
                0 if at < v.len() => v[at] = b,
                1 => v.insert(at, b),
                _ if at < v.len() => {
                    v.remove(at);
                }
                _ => v.push(b),
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "x y", "sixteen-chars-xx", "..", "a:1"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(check_ifname("dpdk:net_tap0")
            .unwrap_err()
            .to_string()
            .contains("is a DPDK port"));
        for good in ["eth0", "veth-a", "enp3s0f1np1"] {
            assert!(check_ifname(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn privilege_errors_say_what_to_do() {
        let e = NicError::Kernel {
            errno: libc::EPERM,
            detail: None,
        };
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
    }
}
