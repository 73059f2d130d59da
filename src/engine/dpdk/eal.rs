//! The DPDK Environment Abstraction Layer: start it once per process, stop it once.
//!
//! Owns `rte_eal_init`/`rte_eal_cleanup` and turning their failures into errors that name
//! the cause and the fix. Never called twice in a process (DPDK forbids it; a second
//! `Eal::init` is refused before reaching DPDK).

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};
use dpdk_sys as sys;

use super::DpdkArgs;

static STARTED: AtomicBool = AtomicBool::new(false);

/// The running EAL. Dropping it runs `rte_eal_cleanup` (after every port was closed).
pub struct Eal {
    pub args: Vec<String>,
}

/// `rte_strerror` of an errno value.
pub fn strerror(e: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string, valid until the next call on this thread; we copy it at once.
    unsafe { CStr::from_ptr(sys::rte_strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

/// The EAL command line for `a` and a worker count.
pub fn eal_args(a: &DpdkArgs, workers: usize, file_prefix: &str) -> Vec<String> {
    let mut v = vec!["tickmesh".to_string()];
    let lcores = a
        .dpdk_lcores
        .clone()
        .unwrap_or_else(|| format!("0-{}", workers.max(1) - 1).replace("0-0", "0"));
    v.extend(["-l".into(), lcores]);
    if a.dpdk_no_huge {
        // --no-huge implies legacy memory, which EAL refuses with --in-memory.
        v.push("--no-huge".into());
    } else {
        v.push("--in-memory".into());
    }
    if let Some(m) = a.dpdk_memory {
        v.extend(["-m".into(), m.to_string()]);
    } else if a.dpdk_no_huge {
        v.extend(["-m".into(), "256".into()]);
    }
    if a.dpdk_allow.is_empty() {
        v.push("--no-pci".into());
    }
    for p in &a.dpdk_allow {
        v.extend(["-a".into(), p.clone()]);
    }
    for d in &a.dpdk_vdev {
        v.extend(["--vdev".into(), d.clone()]);
    }
    v.extend(["--file-prefix".into(), file_prefix.to_string()]);
    v.extend(a.dpdk_eal_arg.iter().cloned());
    v
}

impl Eal {
    pub fn init(args: Vec<String>, no_huge: bool) -> anyhow::Result<Eal> {
        if STARTED.swap(true, Ordering::SeqCst) {
            bail!("the DPDK EAL was already started in this process (DPDK allows one start per process)");
        }
        if tickmesh_offload::backend::cryptodev::eal_started_here() {
            bail!(
                "the TLS offload's cryptodev backend already started the DPDK EAL in this \
                 process (no ports, --no-huge); DPDK allows one start per process: start the \
                 DPDK engine first, or use `offload.backend: software` with it"
            );
        }
        if !no_huge {
            check_hugepages()?;
        }
        let owned: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).context("an EAL argument contains a NUL byte"))
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut c_char> = owned.iter().map(|a| a.as_ptr() as *mut c_char).collect();
        // SAFETY: argv holds pointers to NUL-terminated strings that live for the rest of
        // the process (leaked below, because EAL may keep pointers into them); this is the
        // first and only init in this process (checked above).
        let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if rc < 0 {
            // SAFETY: plain read of the calling thread's rte_errno.
            let errno = unsafe { sys::tm_rte_errno() };
            bail!("{}", explain(errno, &args, no_huge));
        }
        // EAL keeps pointers into argv strings for some options: keep them alive.
        std::mem::forget(owned);
        // The TLS offload's cryptodev backend reuses this EAL (and claims crypto devices
        // it probed, e.g. `--dpdk-vdev crypto_aesni_gcm0`) instead of starting its own.
        tickmesh_offload::backend::cryptodev::note_eal_started();
        Ok(Eal { args })
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: every port was stopped and closed (ports are dropped before the Eal by
        // the engine's field order) and no lcore is running a launched function.
        let rc = unsafe { sys::rte_eal_cleanup() };
        if rc != 0 {
            tracing::warn!("rte_eal_cleanup failed: {}", strerror(-rc));
        }
    }
}

/// Fail early, with the fix, when hugepages are wanted but none are free.
fn check_hugepages() -> anyhow::Result<()> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free == 0 {
        bail!(
            "DPDK needs hugepages but none are free (HugePages_Free: 0 in /proc/meminfo). \
             Reserve some with `scripts/setup --hugepages` (or `echo 256 > /proc/sys/vm/nr_hugepages` \
             and mount hugetlbfs on /dev/hugepages), or run without them: --dpdk-no-huge"
        );
    }
    Ok(())
}

/// A message naming the likely cause of an EAL start failure and what to do.
pub fn explain(errno: i32, args: &[String], no_huge: bool) -> String {
    let line = args.join(" ");
    let cause = match errno {
        libc::EACCES => "permission denied: DPDK needs root (or CAP_SYS_ADMIN, CAP_IPC_LOCK, CAP_NET_ADMIN) for hugepages, vfio and tap devices".to_string(),
        libc::ENOMEM if !no_huge => "not enough hugepage memory: reserve more (`scripts/setup --hugepages`), lower --dpdk-memory, or run with --dpdk-no-huge".to_string(),
        libc::ENOMEM => "not enough memory for --no-huge mode: lower --dpdk-memory".to_string(),
        libc::EALREADY => "the EAL was already started in this process".to_string(),
        libc::ENODEV | libc::ENOEXEC | libc::ENOTSUP => "a device could not be probed: check each --dpdk-vdev string (e.g. `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`, `net_tap0,iface=dtap0`) and --dpdk-allow address; the EAL's own message above names the device".to_string(),
        libc::EINVAL => "invalid EAL arguments (see the EAL's message above): check --dpdk-lcores, --dpdk-vdev and --dpdk-eal-arg".to_string(),
        libc::EFAULT | libc::EPROTO => "the EAL could not set up memory or its bus (see the EAL's message above); with hugepages try --dpdk-no-huge, or free stale /dev/hugepages/*rtemap* files".to_string(),
        0 => "see the EAL's message above; if it says another primary process is running, a DPDK process with the same --dpdk-file-prefix is still alive: stop it or pick another prefix".to_string(),
        _ => format!("{} (see the EAL's message above)", strerror(errno)),
    };
    format!("DPDK EAL failed to start: {cause}. EAL arguments: `{line}`")
}
