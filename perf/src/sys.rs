//! What the harness asks of the OS: CPU affinity, per-process CPU time and memory from
//! `/proc`, and a description of the machine.
//!
//! Reads `/proc` only between measurements, never on a request path. A process that
//! vanished while being read counts as zero rather than failing the report.

use std::fs;
use std::path::Path;

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::Serialize;

/// Pin the calling thread to `cpus` (threads and processes it creates afterwards inherit
/// the mask, which is how spawned peers are placed).
pub fn pin_current_thread(cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)
            .map_err(|e| anyhow::anyhow!("CPU {c} cannot be put in an affinity mask: {e}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| anyhow::anyhow!("cannot pin to CPUs {cpus:?}: {e}"))
}

/// `pid` and all its descendants (nginx: master + workers).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = stat_fields(&format!("/proc/{p}/stat"))
                .and_then(|f| f.get(1).and_then(|s| s.parse().ok()))
            {
                parent_of.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Fields of a `/proc/.../stat` line after the `(comm)` field: index 0 is `state`,
/// 1 is `ppid`, 11 is `utime`, 12 is `stime`.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let s = fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (ns) the processes' threads have run: the sum of every thread's
/// `/proc/PID/task/TID/schedstat` first field (ns precision, unlike the 10 ms ticks of
/// `stat`).
pub fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            let p = t.path().join("schedstat");
            if let Some(ns) = fs::read_to_string(&p).ok().and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            }) {
                total += ns;
            }
        }
    }
    total
}

/// CPU time of this process (user + system, every thread including those that ended),
/// ns: the generator's and backend's work in a run.
pub fn self_cpu_ns() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                tv.tv_sec() as u64 * 1_000_000_000 + tv.tv_usec() as u64 * 1000
            };
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0)
}

/// Resident memory of the processes, summed: (VmRSS, VmHWM) in KiB.
pub fn memory_kib(pids: &[u32]) -> (u64, u64) {
    let (mut rss, mut hwm) = (0, 0);
    for pid in pids {
        let Ok(s) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        rss += status_kib(&s, "VmRSS:");
        hwm += status_kib(&s, "VmHWM:");
    }
    (rss, hwm)
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    pub memory_kib: u64,
    pub os: String,
    /// 1/5/15-minute load averages when the bench started: other work on the machine
    /// shows here (anything near `nproc` means the numbers are noise-dominated).
    pub load_average: [f64; 3],
}

/// `/proc/loadavg`'s three averages (zeros when unreadable).
pub fn load_average() -> [f64; 3] {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
        v.next().unwrap_or(0.0),
    ]
}

pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_else(|_| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    // Online CPUs of the machine, not of our (pinned) affinity mask.
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map_or_else(nproc, |n| n as usize);
    Machine {
        cpu_model,
        nproc: online,
        kernel,
        memory_kib: status_kib(&meminfo, "MemTotal:"),
        os,
        load_average: load_average(),
    }
}

/// CPUs this process may use.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Find an executable by name on `PATH` and in the sbin folders (where Debian puts
/// haproxy and nginx, often not on a non-root `PATH`).
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/local/sbin", "/sbin"]
                .iter()
                .map(Into::into),
        )
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(process_tree(me).contains(&me));
        // Burn a little CPU so the counter is visibly non-zero.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_ns(&[me]) > 0);
        let (rss, hwm) = memory_kib(&[me]);
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
        assert_eq!(cpu_ns(&[u32::MAX]), 0, "a vanished pid counts as zero");
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS:"), 1024);
        assert_eq!(status_kib(s, "VmHWM:"), 2048);
        assert_eq!(status_kib(s, "VmSwap:"), 0);
    }

    #[test]
    fn machine_is_described() {
        let m = machine();
        assert!(m.nproc >= 1);
        assert!(m.kernel.starts_with("Linux"));
        assert!(find_binary("sh").is_some());
        assert!(find_binary("no-such-binary-tickmesh").is_none());
    }
}
