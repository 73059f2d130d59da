//! The DPDK cryptodev backend (feature `dpdk`): record jobs as symmetric AEAD ops on a
//! crypto device — the API that drives DPU and accelerator crypto (BlueField/mlx5, QAT,
//! OCTEON), tested here with the `crypto_openssl` and `crypto_aesni_gcm` virtual devices.
//!
//! Owns: starting the EAL when the process has not (or reusing it when the DPDK engine
//! did, see [`note_eal_started`]), one device per engine (a virtual device of the chosen
//! driver, hot-plugged under a unique name, configured with one queue pair), its session,
//! op and mbuf pools, one AEAD session per record key (made on the control side,
//! [`Backend::device_key`]), and the translation of a job into an op: the nonce (IV ⊕ seq,
//! or the TLS 1.2 explicit nonce) and AAD come from [`RecordKey::plan_seal`] /
//! [`RecordKey::plan_open`], the same code the software backend runs, so records are
//! byte-identical.
//!
//! Must never: block, allocate per job, or panic on a device result. Ops and mbufs are
//! taken from the pools once at start (one op and one mbuf per job slot) and reused; a
//! failed op is the job's [`JobError`]. A key the device cannot take (suite not offered,
//! session pool full) runs in software, per key.
//!
//! How the bytes reach the device ([`DataPath`], chosen per device from its feature flags,
//! logged with the reason): a PMD that offers CPU crypto (`crypto_aesni_gcm`) runs
//! `rte_cryptodev_sym_cpu_crypto_process` on the job buffers in place — no op, no mbuf, no
//! copy; another software PMD (`crypto_openssl`) gets ops whose mbuf carries the job buffer
//! as an external buffer (`rte_pktmbuf_attach_extbuf`), so it reads and writes the record
//! where it lies; a hardware device (`RTE_CRYPTODEV_FF_HW_ACCELERATED`) gets the record
//! copied into the op's own mbuf and the result copied back, because it DMAs from
//! IOVA-contiguous registered memory and job buffers are process heap (registering them
//! with `rte_extmem_register` + `rte_dev_dma_map` is later work).

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{c_void, CStr, CString};
use std::os::raw::c_char;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dpdk_sys as sys;

use super::{Backend, BackendKind};
use crate::error::JobError;
use crate::job::{Job, Op};
use crate::record::{DeviceKey, MAX_RECORD, TAG_LEN};
use crate::suite::{CipherSuite, Direction, SessionError, TlsVersion, TrafficKeys};

/// The crypto device drivers this backend knows how to instantiate as virtual devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// `crypto_openssl`: OpenSSL's EVP AEADs behind the cryptodev API.
    Openssl,
    /// `crypto_aesni_gcm` (from `crypto_ipsec_mb`): Intel multi-buffer AES-GCM. No ChaCha.
    AesniGcm,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Openssl => "crypto_openssl",
            Driver::AesniGcm => "crypto_aesni_gcm",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "crypto_openssl" | "openssl" => Ok(Driver::Openssl),
            "crypto_aesni_gcm" | "aesni_gcm" => Ok(Driver::AesniGcm),
            other => Err(format!(
                "unknown cryptodev driver {other:?}: expected crypto_openssl or crypto_aesni_gcm"
            )),
        }
    }
}

/// Environment variable naming the driver (`crypto_openssl` or `crypto_aesni_gcm`).
pub const DRIVER_ENV: &str = "TICKMESH_CRYPTODEV";

/// How record bytes reach the crypto device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataPath {
    /// `rte_cryptodev_sym_cpu_crypto_process` on the job buffers in place, one call per
    /// run of jobs under the same key (PMDs with `RTE_CRYPTODEV_FF_SYM_CPU_CRYPTO`, e.g.
    /// crypto_aesni_gcm). Synchronous on this CPU, like the software backend; zero copy.
    CpuCrypto,
    /// Ops whose mbuf carries the job buffer as an external buffer: the device reads and
    /// writes the record in place. For software PMDs (no `RTE_CRYPTODEV_FF_HW_ACCELERATED`),
    /// which address data by virtual address; zero copy.
    ExternalBuffer,
    /// The record copied into the op's own mbuf and the result copied back (hardware
    /// devices: DMA needs registered, IOVA-contiguous memory).
    Copy,
}

impl DataPath {
    pub const ALL: [DataPath; 3] = [
        DataPath::CpuCrypto,
        DataPath::ExternalBuffer,
        DataPath::Copy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DataPath::CpuCrypto => "cpu-crypto",
            DataPath::ExternalBuffer => "external-buffer",
            DataPath::Copy => "copy",
        }
    }
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DataPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu-crypto" | "cpu" => Ok(DataPath::CpuCrypto),
            "external-buffer" | "extbuf" => Ok(DataPath::ExternalBuffer),
            "copy" => Ok(DataPath::Copy),
            other => Err(format!(
                "unknown cryptodev data path {other:?}: expected cpu-crypto, external-buffer or copy"
            )),
        }
    }
}

/// Environment variable forcing the data path (`cpu-crypto`, `external-buffer`, `copy`);
/// a path the device cannot take falls back to what it can, logged.
pub const DATA_PATH_ENV: &str = "TICKMESH_CRYPTODEV_DATA";

/// Process-wide state: the EAL (started here, by the host, or not at all) and the
/// configured driver. Control side only.
struct Global {
    eal: EalState,
    driver: Option<Driver>,
    data_path: Option<DataPath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EalState {
    NotStarted,
    /// The process's DPDK engine started it ([`note_eal_started`]).
    Host,
    /// This module started it (`--no-huge`, no PCI).
    Here,
    Failed(String),
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    eal: EalState::NotStarted,
    driver: None,
    data_path: None,
});
/// Serialises device hot-plug and teardown: DPDK's device lists are not thread-safe, and
/// engines start and stop on different threads (control side only).
static HOTPLUG: Mutex<()> = Mutex::new(());
/// Devices the EAL probed (`--vdev`/PCI from the DPDK engine's arguments) that an engine
/// has claimed: one engine per device (its queue pair is not shared).
static CLAIMED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
fn claimed() -> std::sync::MutexGuard<'static, Vec<u8>> {
    CLAIMED.lock().unwrap_or_else(|e| e.into_inner())
}
static DEVICE_SEQ: AtomicU32 = AtomicU32::new(0);
/// Ops the devices of this process completed (one relaxed add per dequeued burst).
static DEVICE_OPS: AtomicU64 = AtomicU64::new(0);

/// Ops completed per data path (same order as [`DataPath::ALL`]).
static PATH_OPS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// How many ops crypto devices of this process have completed (tests and diagnostics:
/// proves records went through the device and not the per-key software fallback).
pub fn device_ops() -> u64 {
    DEVICE_OPS.load(Ordering::Relaxed)
}

/// How many of those went through `path` (tests: proves which data path served them).
pub fn data_path_ops(path: DataPath) -> u64 {
    PATH_OPS[path as usize].load(Ordering::Relaxed)
}

fn count_ops(path: DataPath, n: usize) {
    DEVICE_OPS.fetch_add(n as u64, Ordering::Relaxed);
    PATH_OPS[path as usize].fetch_add(n as u64, Ordering::Relaxed);
}

fn global() -> std::sync::MutexGuard<'static, Global> {
    // A panic while holding this lock leaves plain data behind; keep using it.
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The DPDK engine calls this after it started the EAL, so the offload engine reuses it
/// instead of starting it a second time (DPDK allows one start per process).
pub fn note_eal_started() {
    global().eal = EalState::Host;
}

/// Whether this module started the EAL itself (the DPDK engine must not start it again).
pub fn eal_started_here() -> bool {
    global().eal == EalState::Here
}

/// Pick the driver for devices made from now on (`None`: `$TICKMESH_CRYPTODEV`, else
/// `crypto_aesni_gcm` if its PMD loads, else `crypto_openssl`).
pub fn set_driver(driver: Option<Driver>) {
    global().driver = driver;
}

/// Force the data path of devices made from now on (`None`: `$TICKMESH_CRYPTODEV_DATA`,
/// else the best the device offers). A path a device cannot take is logged and replaced.
pub fn set_data_path(path: Option<DataPath>) {
    global().data_path = path;
}

/// Whether `auto` should consider cryptodev: the EAL already runs in this process, or the
/// operator named a driver. `auto` does not start an EAL just to look (it reserves
/// memory and pins the calling thread's CPU set during start-up).
pub fn worth_probing() -> bool {
    let g = global();
    matches!(g.eal, EalState::Host | EalState::Here)
        || g.driver.is_some()
        || std::env::var_os(DRIVER_ENV).is_some()
}

fn ensure_eal(g: &mut Global) -> Result<(), String> {
    match &g.eal {
        EalState::Host | EalState::Here => return Ok(()),
        EalState::Failed(why) => return Err(why.clone()),
        EalState::NotStarted => {}
    }
    let args: Vec<String> = [
        "tickmesh-offload",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "-l",
        "0",
        // PMDs log every device creation at info level; keep warnings and errors.
        "--log-level=warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--file-prefix=tm-offload-{}", std::process::id())])
    .collect();
    let owned: Vec<CString> = args
        .iter()
        // The arguments above contain no NUL byte.
        .map(|a| CString::new(a.as_str()).expect("EAL argument without NUL"))
        .collect();
    let mut argv: Vec<*mut c_char> = owned.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    // rte_eal_init pins the calling thread to lcore 0's CPU; this thread is a worker
    // that must keep the CPU set it had, so save and restore it.
    let saved = current_affinity();
    // SAFETY: argv points to NUL-terminated strings that are leaked below (EAL may keep
    // pointers into them); the global lock serialises this with every other start, and
    // `eal` says no start happened in this process yet.
    let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    if let Some(set) = saved {
        restore_affinity(&set);
    }
    if rc < 0 {
        // SAFETY: plain read of this thread's rte_errno.
        let errno = unsafe { sys::tm_rte_errno() };
        let why = format!(
            "the DPDK EAL did not start for the cryptodev backend ({}); EAL arguments: `{}`",
            strerror(errno),
            args.join(" ")
        );
        g.eal = EalState::Failed(why.clone());
        return Err(why);
    }
    std::mem::forget(owned);
    g.eal = EalState::Here;
    tracing::info!(args = %args.join(" "), "DPDK EAL started for the cryptodev offload backend");
    Ok(())
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

fn strerror(e: i32) -> String {
    // SAFETY: rte_strerror returns a NUL-terminated string valid until the next call on
    // this thread; copied at once.
    unsafe { CStr::from_ptr(sys::rte_strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

fn cstring(s: String) -> CString {
    // Names built here from driver names and numbers: no NUL byte.
    CString::new(s).expect("name without NUL")
}

/// Most device sessions (one per record key, so two per connection) one engine's device
/// holds; keys beyond it run in software (logged once).
pub const SESSIONS_PER_DEVICE: u32 = 4096;

/// Queue pair depth (at least the engine's slot count).
const QP_DESCRIPTORS: u32 = 2048;

/// Byte offsets inside each op's private area (after the symmetric op).
const PRIV_IV: usize = 0;
const PRIV_AAD: usize = 16;
const PRIV_INDEX: usize = 32;
const PRIV_SIZE: u16 = 48;
/// Mbuf data room: one full record after the headroom.
const MBUF_ROOM: usize = MAX_RECORD + sys::RTE_PKTMBUF_HEADROOM as usize;

/// One crypto device with its pools. Shared (`Arc`) by the backend and every session made
/// on it, so pools are freed only after the last session.
struct Device {
    id: u8,
    /// The virtual device we hot-plugged (removed again on drop); `None` for a device the
    /// process's EAL probed (claimed, released on drop).
    vdev: Option<CString>,
    /// The PMD's name (`crypto_openssl`, `crypto_aesni_gcm`, `crypto_qat`, …).
    driver: String,
    sess_pool: *mut sys::rte_mempool,
    op_pool: *mut sys::rte_mempool,
    mbuf_pool: *mut sys::rte_mempool,
    started: bool,
}

// SAFETY: the pools and the device are DPDK objects usable from any thread; the device's
// queue pair is used only by the one backend that owns it (the backend is not Sync and
// moves with its engine), and session create/free go through thread-safe mempools.
unsafe impl Send for Device {}
// SAFETY: shared references only read the ids and pool pointers.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        let _hotplug = HOTPLUG.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: no op is in flight any more (the backend drained or dropped its jobs
        // before the last Arc went away), every session on this device was freed (they
        // hold this Arc), and the pools were created by `open` and are freed once.
        unsafe {
            if self.started {
                sys::rte_cryptodev_stop(self.id);
            }
            match &self.vdev {
                Some(name) => {
                    sys::rte_cryptodev_close(self.id);
                    sys::rte_eal_hotplug_remove(c"vdev".as_ptr(), name.as_ptr());
                }
                None => {
                    claimed().retain(|&d| d != self.id);
                }
            }
            for p in [self.op_pool, self.mbuf_pool, self.sess_pool] {
                if !p.is_null() {
                    sys::rte_mempool_free(p);
                }
            }
        }
    }
}

/// A device AEAD session for one record key (one direction).
struct DevSession {
    sess: *mut c_void,
    dev: Arc<Device>,
}

// SAFETY: a session is an immutable device object once created; it is attached to ops on
// the owning backend's thread and freed once, in Drop.
unsafe impl Send for DevSession {}
// SAFETY: see Send; shared access only reads the pointer.
unsafe impl Sync for DevSession {}

impl Drop for DevSession {
    fn drop(&mut self) {
        // SAFETY: `sess` came from rte_cryptodev_sym_session_create on this device and no
        // op uses it any more (in-flight jobs hold the key, hence this session, until
        // they are reaped).
        unsafe {
            sys::rte_cryptodev_sym_session_free(self.dev.id, self.sess);
        }
    }
}

/// The backend: one device, one queue pair, one op + mbuf per job slot.
pub struct Cryptodev {
    dev: Arc<Device>,
    ops: Vec<*mut sys::rte_crypto_op>,
    mbufs: Vec<*mut sys::rte_mbuf>,
    free_ops: Vec<u32>,
    /// The job each busy op carries, by op index.
    #[allow(clippy::vec_box)]
    inflight: Vec<Option<Box<Job>>>,
    busy: usize,
    /// Jobs finished without the device (failed checks, keys in software).
    done: VecDeque<Box<Job>>,
    /// Scratch for one burst (capacity `slots`).
    burst: Vec<*mut sys::rte_crypto_op>,
    /// Op start → private area.
    priv_offset: usize,
    pool_warned: bool,
    path: DataPath,
    /// External-buffer path: one shared-info block per op (its mbuf points at it while a
    /// job buffer is attached). Boxed slice: addresses never move.
    shinfo: Box<[sys::rte_mbuf_ext_shared_info]>,
    /// The IOVA of a job buffer is its virtual address (EAL in IOVA-as-VA mode); else the
    /// external-buffer path passes `RTE_BAD_IOVA` (software PMDs read the virtual address).
    iova_is_va: bool,
    /// CPU-crypto path: the jobs of one call and its argument arrays.
    cpu: Box<CpuBurst>,
}

/// `RTE_BAD_IOVA`: no IOVA (software PMDs use the virtual address).
const BAD_IOVA: u64 = u64::MAX;

/// `iova + off`, keeping "no IOVA" as it is.
fn iova_at(iova: u64, off: usize) -> u64 {
    if iova == BAD_IOVA {
        BAD_IOVA
    } else {
        iova.wrapping_add(off as u64)
    }
}

/// Most jobs in one `rte_cryptodev_sym_cpu_crypto_process` call.
const CPU_BURST: usize = 64;

/// Argument arrays of one CPU-crypto call, allocated once per backend.
struct CpuBurst {
    #[allow(clippy::vec_box)]
    jobs: Vec<Box<Job>>,
    sess: *mut c_void,
    vec: [sys::rte_crypto_vec; CPU_BURST],
    sgl: [sys::rte_crypto_sgl; CPU_BURST],
    iv: [[u8; 16]; CPU_BURST],
    aad: [[u8; 16]; CPU_BURST],
    iv_ptr: [sys::rte_crypto_va_iova_ptr; CPU_BURST],
    aad_ptr: [sys::rte_crypto_va_iova_ptr; CPU_BURST],
    digest_ptr: [sys::rte_crypto_va_iova_ptr; CPU_BURST],
    status: [i32; CPU_BURST],
}

impl CpuBurst {
    fn new() -> Box<CpuBurst> {
        // SAFETY: the arrays are plain C structs of pointers and integers, for which
        // all-zero is a valid (empty) value; every entry a call uses is set before it.
        let (vec, sgl, iv_ptr, aad_ptr, digest_ptr) = unsafe {
            (
                std::mem::zeroed(),
                std::mem::zeroed(),
                std::mem::zeroed(),
                std::mem::zeroed(),
                std::mem::zeroed(),
            )
        };
        Box::new(CpuBurst {
            jobs: Vec::with_capacity(CPU_BURST),
            sess: std::ptr::null_mut(),
            vec,
            sgl,
            iv: [[0; 16]; CPU_BURST],
            aad: [[0; 16]; CPU_BURST],
            iv_ptr,
            aad_ptr,
            digest_ptr,
            status: [0; CPU_BURST],
        })
    }
}

/// The job buffer belongs to its job, not to the mbuf: nothing to free on detach.
unsafe extern "C" fn keep_job_buffer(_addr: *mut c_void, _opaque: *mut c_void) {}

/// Which data path a device gets: the best it offers, or what the operator forced if the
/// device can take it. Returns the path and why (for the log).
fn choose_path(flags: u64, wanted: Option<DataPath>) -> (DataPath, String) {
    let cpu = flags & u64::from(sys::RTE_CRYPTODEV_FF_SYM_CPU_CRYPTO) != 0;
    let hw = flags & u64::from(sys::RTE_CRYPTODEV_FF_HW_ACCELERATED) != 0;
    let (best, why) = if cpu {
        (
            DataPath::CpuCrypto,
            "the PMD offers CPU crypto: records are processed in place, zero copy",
        )
    } else if !hw {
        (
            DataPath::ExternalBuffer,
            "a software PMD: ops carry the job buffers as external mbuf buffers, zero copy",
        )
    } else {
        (DataPath::Copy, "a hardware device DMAs from registered memory and job buffers are heap: records are copied into its mbufs")
    };
    match wanted {
        None => (best, why.to_string()),
        Some(DataPath::CpuCrypto) if !cpu => (
            best,
            format!("cpu-crypto was asked for but the PMD does not offer it; {why}"),
        ),
        Some(DataPath::ExternalBuffer) if hw => (
            DataPath::Copy,
            "external-buffer was asked for but a hardware device needs registered DMA memory: records are copied".to_string(),
        ),
        Some(p) => (p, format!("{p} as configured")),
    }
}

// SAFETY: the raw pointers are this backend's own ops/mbufs (no one else touches them)
// and the device's queue pair is used only through `&mut self`.
unsafe impl Send for Cryptodev {}

impl Drop for Cryptodev {
    fn drop(&mut self) {
        // Take back every op still in the device before it goes, so no stale op can
        // surface from a queue the PMD keeps for the next device with this id. The
        // software PMDs finish ops at enqueue; real devices get a bounded wait.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while self.busy > 0 && std::time::Instant::now() < deadline {
            self.burst.clear();
            let want = self.burst.capacity().clamp(1, u16::MAX as usize);
            // SAFETY: as in `dequeue`: the device writes at most `want` op pointers.
            let got = unsafe {
                let got = sys::tm_cryptodev_dequeue_burst(
                    self.dev.id,
                    0,
                    self.burst.as_mut_ptr(),
                    want as u16,
                );
                self.burst.set_len(usize::from(got));
                usize::from(got)
            };
            for k in 0..got {
                let op = self.burst[k];
                drop(self.complete(op));
            }
            if got == 0 {
                std::thread::yield_now();
            }
        }
    }
}

impl Cryptodev {
    /// Start the EAL if needed and bring up a device for `slots` jobs. The error says
    /// what failed and what to do.
    pub fn open(slots: usize) -> Result<Cryptodev, String> {
        let mut g = global();
        ensure_eal(&mut g)?;
        let drivers: Vec<Driver> = match g.driver {
            Some(d) => vec![d],
            None => match std::env::var(DRIVER_ENV) {
                Ok(s) => vec![s.parse::<Driver>()?],
                Err(_) => vec![Driver::AesniGcm, Driver::Openssl],
            },
        };
        let wanted = match g.data_path {
            Some(p) => Some(p),
            None => match std::env::var(DATA_PATH_ENV) {
                Ok(s) => Some(s.parse::<DataPath>()?),
                Err(_) => None,
            },
        };
        let mut errors = Vec::new();
        if g.eal == EalState::Host {
            // The DPDK engine's EAL may have probed crypto devices (`--dpdk-vdev
            // crypto_aesni_gcm0`, a QAT or mlx5 PCI device): use a free one first.
            if let Some(dev) = Device::claim(slots, &mut errors) {
                return Cryptodev::with_device(dev, slots, wanted);
            }
        }
        for driver in drivers {
            match Device::open(driver, slots) {
                Ok(dev) => return Cryptodev::with_device(dev, slots, wanted),
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    }

    fn with_device(
        dev: Device,
        slots: usize,
        wanted: Option<DataPath>,
    ) -> Result<Cryptodev, String> {
        let dev = Arc::new(dev);
        // SAFETY: `info` is plain data the call fills for a valid device id.
        let flags = unsafe {
            let mut info: sys::rte_cryptodev_info = std::mem::zeroed();
            sys::rte_cryptodev_info_get(dev.id, &mut info);
            info.feature_flags
        };
        let (path, why) = choose_path(flags, wanted);
        tracing::info!(driver = %dev.driver, data_path = %path, "cryptodev data path: {why}");
        let mut ops = Vec::with_capacity(slots);
        let mut mbufs = Vec::with_capacity(slots);
        let mut priv_offset = 0;
        for _ in 0..slots {
            // SAFETY: pools created by Device::open; a NULL result is checked.
            let (op, m) = unsafe {
                (
                    sys::tm_crypto_op_alloc(
                        dev.op_pool,
                        sys::rte_crypto_op_type::RTE_CRYPTO_OP_TYPE_SYMMETRIC,
                    ),
                    sys::tm_pktmbuf_alloc(dev.mbuf_pool),
                )
            };
            if op.is_null() || m.is_null() {
                return Err("the cryptodev op or mbuf pool ran dry at start".into());
            }
            // SAFETY: `m` is a fresh mbuf with MBUF_ROOM bytes of data room; the append
            // makes the whole record-sized area part of its data (checked for NULL).
            let appended = unsafe { sys::tm_pktmbuf_append(m, MAX_RECORD as u16) };
            if appended.is_null() {
                return Err("cryptodev mbufs are too small for a TLS record".into());
            }
            // SAFETY: `op` is a valid symmetric op; `sym` points right after the op
            // struct (the zero-length union), and the private area follows the sym op.
            priv_offset = unsafe {
                let sym = sys::tm_crypto_op_sym(op);
                sym as usize - op as usize + std::mem::size_of::<sys::rte_crypto_sym_op>()
            };
            ops.push(op);
            mbufs.push(m);
        }
        Ok(Cryptodev {
            dev,
            free_ops: (0..slots as u32).rev().collect(),
            inflight: (0..slots).map(|_| None).collect(),
            busy: 0,
            done: VecDeque::with_capacity(slots),
            burst: Vec::with_capacity(slots),
            ops,
            mbufs,
            priv_offset,
            pool_warned: false,
            path,
            shinfo: (0..slots)
                .map(|_| sys::rte_mbuf_ext_shared_info {
                    free_cb: Some(keep_job_buffer),
                    fcb_opaque: std::ptr::null_mut(),
                    ..Default::default()
                })
                .collect(),
            // SAFETY: a plain query of the running EAL.
            iova_is_va: unsafe { sys::rte_eal_iova_mode() } == sys::rte_iova_mode::RTE_IOVA_VA,
            cpu: CpuBurst::new(),
        })
    }

    /// The PMD driving this backend's device (`crypto_openssl`, `crypto_aesni_gcm`, …).
    pub fn driver(&self) -> &str {
        &self.dev.driver
    }

    /// How record bytes reach this backend's device.
    pub fn data_path(&self) -> DataPath {
        self.path
    }

    /// The IOVA the device gets for a job buffer address (see `iova_is_va`).
    fn iova_of(&self, p: *const u8) -> u64 {
        if self.iova_is_va {
            p as u64
        } else {
            BAD_IOVA
        }
    }

    /// Frame the job and write it into a free op and its mbuf. Returns the op index and
    /// the job, or `None` when the job finished without the device (a failed check, or a
    /// key in software): it is then in `done`.
    fn prepare(&mut self, mut job: Box<Job>) -> Option<(u32, Box<Job>)> {
        let j: &mut Job = &mut job;
        let Some(key) = j.key.as_deref() else {
            j.result = Err(JobError::SessionGone);
            self.done.push_back(job);
            return None;
        };
        let Some(sess) = key.device().and_then(|d| d.downcast_ref::<DevSession>()) else {
            // This key has no device session (suite not offered): software, per key.
            job.run_software();
            self.done.push_back(job);
            return None;
        };
        let sess = sess.sess;
        let planned = match j.op {
            Op::Seal => key.plan_seal(j.seq, j.content_type, &mut j.buf, j.input_len),
            Op::Open => key.plan_open(j.seq, &j.buf, j.input_len),
        };
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                job.result = Err(e);
                self.done.push_back(job);
                return None;
            }
        };
        let Some(i) = self.free_ops.pop() else {
            // One op per slot: cannot happen; fail the job rather than lose it.
            job.result = Err(JobError::Crypto);
            self.done.push_back(job);
            return None;
        };
        let (op, m) = (self.ops[i as usize], self.mbufs[i as usize]);
        // What the device works on: the header and payload (seal) or the whole record
        // (open), from the buffer's start.
        let data_len = plan.tag_at + TAG_LEN;
        let zero_copy = self.path == DataPath::ExternalBuffer;
        let buf = job.buf.as_mut_ptr();
        let buf_iova = self.iova_of(buf);
        let shinfo: *mut sys::rte_mbuf_ext_shared_info = &mut self.shinfo[i as usize];
        // SAFETY: `op` and `m` are this backend's own, not in the device (index `i` was
        // free); `m` is direct (never attached, or detached in `complete`). The job
        // buffer is MAX_RECORD bytes (fits the mbuf's u16 length) and stays where it is
        // while the job waits in `inflight` (a boxed slice never moves); nothing else
        // touches it until `complete`. data_len ≤ MAX_RECORD (the plan checked every
        // length against that buffer). The private area has PRIV_SIZE bytes at
        // priv_offset.
        unsafe {
            let (data, iova) = if zero_copy {
                // The device works on the job buffer itself.
                sys::tm_mbuf_ext_refcnt_set(shinfo, 1);
                sys::tm_pktmbuf_attach_extbuf(m, buf.cast(), buf_iova, MAX_RECORD as u16, shinfo);
                (*m).data_len = data_len as u16;
                (*m).pkt_len = data_len as u32;
                (buf, buf_iova)
            } else {
                // Copy in; `complete` copies the result back.
                let data = sys::tm_pktmbuf_mtod(m) as *mut u8;
                let copy_len = match job.op {
                    Op::Seal => plan.tag_at,
                    Op::Open => plan.tag_at + TAG_LEN,
                };
                std::ptr::copy_nonoverlapping(buf, data, copy_len);
                (data, (*m).buf_iova + u64::from((*m).data_off))
            };
            let priv_ = (op as *mut u8).add(self.priv_offset);
            std::ptr::copy_nonoverlapping(plan.nonce.as_ptr(), priv_.add(PRIV_IV), 12);
            let aad = plan.aad();
            std::ptr::copy_nonoverlapping(aad.as_ptr(), priv_.add(PRIV_AAD), aad.len());
            std::ptr::write_unaligned(priv_.add(PRIV_INDEX) as *mut u32, i);
            (*op).__bindgen_anon_1.__bindgen_anon_1.status =
                sys::rte_crypto_op_status::RTE_CRYPTO_OP_STATUS_NOT_PROCESSED as u8;
            sys::tm_crypto_op_attach_sym_session(op, sess);
            let sym = sys::tm_crypto_op_sym(op);
            (*sym).m_src = m;
            (*sym).m_dst = std::ptr::null_mut();
            let a = &mut (*sym).__bindgen_anon_2.aead;
            a.data.offset = plan.data.start as u32;
            a.data.length = plan.data.len() as u32;
            a.digest.data = data.add(plan.tag_at);
            a.digest.phys_addr = iova_at(iova, plan.tag_at);
            a.aad.data = priv_.add(PRIV_AAD);
            a.aad.phys_addr = (*op).phys_addr + (self.priv_offset + PRIV_AAD) as u64;
        }
        // Remember what to copy back (seal: ciphertext + tag; open: plaintext).
        match job.op {
            Op::Seal => {
                job.out_start = plan.data.start;
                job.out_len = plan.tag_at + TAG_LEN - plan.data.start;
            }
            Op::Open => {
                job.out_start = plan.data.start;
                job.out_len = plan.data.len();
            }
        }
        Some((i, job))
    }

    /// A completed op: copy the result back (copy path) and finish the job.
    fn complete(&mut self, op: *mut sys::rte_crypto_op) -> Option<Box<Job>> {
        // SAFETY: `op` came back from the device and is one of ours; its private area
        // holds the index written in `prepare`.
        let (i, status) = unsafe {
            let priv_ = (op as *const u8).add(self.priv_offset);
            (
                std::ptr::read_unaligned(priv_.add(PRIV_INDEX) as *const u32),
                (*op).__bindgen_anon_1.__bindgen_anon_1.status,
            )
        };
        let mut job = self.inflight.get_mut(i as usize)?.take()?;
        self.busy -= 1;
        self.free_ops.push(i);
        let m = self.mbufs[i as usize];
        let (start, len) = (job.out_start, job.out_len);
        let zero_copy = self.path == DataPath::ExternalBuffer;
        if zero_copy {
            // SAFETY: `m` had the job buffer attached in `prepare` and the device has
            // handed the op back; detaching restores its own buffer (the free callback
            // does nothing: the job owns its buffer).
            unsafe { sys::tm_pktmbuf_detach(m) };
        }
        count_ops(self.path, 1);
        job.result = match u32::from(status) {
            sys::rte_crypto_op_status::RTE_CRYPTO_OP_STATUS_SUCCESS if zero_copy => {
                finish(&mut job, start, len)
            }
            sys::rte_crypto_op_status::RTE_CRYPTO_OP_STATUS_SUCCESS => {
                // SAFETY: start + len ≤ MAX_RECORD (set by `prepare` from a checked
                // plan); the mbuf data and the job buffer are both MAX_RECORD long.
                unsafe {
                    let data = sys::tm_pktmbuf_mtod(m) as *const u8;
                    std::ptr::copy_nonoverlapping(
                        data.add(start),
                        job.buf.as_mut_ptr().add(start),
                        len,
                    );
                }
                finish(&mut job, start, len)
            }
            sys::rte_crypto_op_status::RTE_CRYPTO_OP_STATUS_AUTH_FAILED => {
                Err(JobError::BadRecordMac)
            }
            _ => Err(JobError::Crypto),
        };
        Some(job)
    }
}

impl Cryptodev {
    /// CPU-crypto path: frame every job of the burst in its own buffer and process runs
    /// of jobs under the same device session with one
    /// `rte_cryptodev_sym_cpu_crypto_process` call each, in place. Finished jobs go to
    /// `done` (handed back by `dequeue`). Takes the whole burst.
    fn run_cpu(&mut self, sq: &mut VecDeque<Box<Job>>) -> usize {
        let taken = sq.len();
        while let Some(mut job) = sq.pop_front() {
            let j: &mut Job = &mut job;
            let Some(key) = j.key.as_deref() else {
                j.result = Err(JobError::SessionGone);
                self.done.push_back(job);
                continue;
            };
            let Some(sess) = key.device().and_then(|d| d.downcast_ref::<DevSession>()) else {
                job.run_software();
                self.done.push_back(job);
                continue;
            };
            let sess = sess.sess;
            let planned = match j.op {
                Op::Seal => key.plan_seal(j.seq, j.content_type, &mut j.buf, j.input_len),
                Op::Open => key.plan_open(j.seq, &j.buf, j.input_len),
            };
            let plan = match planned {
                Ok(p) => p,
                Err(e) => {
                    job.result = Err(e);
                    self.done.push_back(job);
                    continue;
                }
            };
            if self.cpu.sess != sess || self.cpu.jobs.len() == CPU_BURST {
                self.flush_cpu();
                self.cpu.sess = sess;
            }
            let buf = job.buf.as_mut_ptr();
            let iova = self.iova_of(buf);
            let c = &mut *self.cpu;
            let k = c.jobs.len();
            // Pointers into the job buffer: it stays put (boxed slice) while the job sits
            // in `c.jobs`, and the plan checked every range against its length.
            c.vec[k] = sys::rte_crypto_vec {
                base: buf.wrapping_add(plan.data.start).cast(),
                iova: iova_at(iova, plan.data.start),
                len: plan.data.len() as u32,
                tot_len: plan.data.len() as u32,
            };
            c.digest_ptr[k] = sys::rte_crypto_va_iova_ptr {
                va: buf.wrapping_add(plan.tag_at).cast(),
                iova: iova_at(iova, plan.tag_at),
            };
            c.iv[k][..12].copy_from_slice(&plan.nonce);
            let aad = plan.aad();
            c.aad[k][..aad.len()].copy_from_slice(aad);
            (job.out_start, job.out_len) = match job.op {
                Op::Seal => (plan.data.start, plan.tag_at + TAG_LEN - plan.data.start),
                Op::Open => (plan.data.start, plan.data.len()),
            };
            c.jobs.push(job);
        }
        self.flush_cpu();
        taken
    }

    /// Process the jobs gathered in `cpu` (one device session) and move them to `done`.
    fn flush_cpu(&mut self) {
        let c = &mut *self.cpu;
        let n = c.jobs.len();
        if n == 0 {
            return;
        }
        for k in 0..n {
            c.sgl[k] = sys::rte_crypto_sgl {
                vec: &mut c.vec[k],
                num: 1,
            };
            c.iv_ptr[k] = sys::rte_crypto_va_iova_ptr {
                va: c.iv[k].as_mut_ptr().cast(),
                iova: 0,
            };
            c.aad_ptr[k] = sys::rte_crypto_va_iova_ptr {
                va: c.aad[k].as_mut_ptr().cast(),
                iova: 0,
            };
            c.status[k] = 0;
        }
        // SAFETY: every array holds `n` initialised entries (set above and in `run_cpu`)
        // pointing into job buffers that are alive and untouched during the call (owned
        // by `c.jobs`) or into `c` itself; `sess` is a live session of this device (the
        // jobs hold its key); the PMD processes in place (dest_sgl NULL) and writes at
        // most `n` statuses.
        // The return value counts successes; the per-job statuses below say which.
        unsafe {
            let mut v: sys::rte_crypto_sym_vec = std::mem::zeroed();
            v.num = n as u32;
            v.src_sgl = c.sgl.as_mut_ptr();
            v.dest_sgl = std::ptr::null_mut();
            v.iv = c.iv_ptr.as_mut_ptr();
            v.digest = c.digest_ptr.as_mut_ptr();
            v.__bindgen_anon_1.aad = c.aad_ptr.as_mut_ptr();
            v.status = c.status.as_mut_ptr();
            let ofs = sys::rte_crypto_sym_ofs { raw: 0 };
            sys::rte_cryptodev_sym_cpu_crypto_process(self.dev.id, c.sess, ofs, &mut v);
        }
        count_ops(DataPath::CpuCrypto, n);
        for (k, mut job) in c.jobs.drain(..).enumerate() {
            let (start, len) = (job.out_start, job.out_len);
            job.result = match c.status[k] {
                0 => finish(&mut job, start, len),
                libc::EBADMSG => Err(JobError::BadRecordMac),
                _ => Err(JobError::Crypto),
            };
            self.done.push_back(job);
        }
    }
}

fn finish(job: &mut Job, start: usize, len: usize) -> Result<(), JobError> {
    match job.op {
        Op::Seal => {
            job.out_start = 0;
            job.out_len = start + len;
            Ok(())
        }
        Op::Open => {
            let key = job.key.as_deref().ok_or(JobError::SessionGone)?;
            let (ct, range) = key.finish_open(&job.buf, start..start + len)?;
            job.content_type = ct;
            job.out_start = range.start;
            job.out_len = range.len();
            Ok(())
        }
    }
}

impl Backend for Cryptodev {
    fn kind(&self) -> BackendKind {
        BackendKind::Cryptodev
    }

    fn enqueue(&mut self, sq: &mut VecDeque<Box<Job>>) -> usize {
        if self.path == DataPath::CpuCrypto {
            return self.run_cpu(sq);
        }
        let mut taken = 0;
        while !sq.is_empty() && !self.free_ops.is_empty() {
            self.burst.clear();
            let mut indices = [0u32; 64];
            while self.burst.len() < indices.len() {
                let Some(job) = sq.pop_front() else { break };
                taken += 1;
                if let Some((i, job)) = self.prepare(job) {
                    indices[self.burst.len()] = i;
                    self.burst.push(self.ops[i as usize]);
                    self.inflight[i as usize] = Some(job);
                    self.busy += 1;
                }
                if self.free_ops.is_empty() {
                    break;
                }
            }
            let n = self.burst.len();
            if n == 0 {
                continue;
            }
            // SAFETY: `burst` holds `n` prepared ops of this backend; the queue pair is
            // ours alone.
            let accepted = usize::from(unsafe {
                sys::tm_cryptodev_enqueue_burst(self.dev.id, 0, self.burst.as_mut_ptr(), n as u16)
            });
            if accepted < n {
                // The device is full: hand the rest back to the front of the ring, in
                // order (re-framing them later is idempotent).
                for &i in indices[accepted..n].iter().rev() {
                    if let Some(job) = self.inflight[i as usize].take() {
                        self.busy -= 1;
                        self.free_ops.push(i);
                        sq.push_front(job);
                        taken -= 1;
                    }
                }
                break;
            }
        }
        taken
    }

    fn dequeue(&mut self, cq: &mut VecDeque<Box<Job>>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(job) = self.done.pop_front() else {
                break;
            };
            cq.push_back(job);
            n += 1;
        }
        if n < max && self.busy > 0 {
            let want = (max - n).min(self.burst.capacity()).min(u16::MAX as usize);
            self.burst.clear();
            // SAFETY: `burst` has capacity for `want` pointers; the device writes at most
            // `want` and returns how many, which we then expose with set_len.
            let got = unsafe {
                let got = sys::tm_cryptodev_dequeue_burst(
                    self.dev.id,
                    0,
                    self.burst.as_mut_ptr(),
                    want as u16,
                );
                self.burst.set_len(usize::from(got));
                usize::from(got)
            };
            for k in 0..got {
                let op = self.burst[k];
                if let Some(job) = self.complete(op) {
                    cq.push_back(job);
                    n += 1;
                }
            }
        }
        n
    }

    fn in_device(&self) -> usize {
        self.busy + self.done.len()
    }

    fn device_key(
        &mut self,
        suite: CipherSuite,
        version: TlsVersion,
        dir: Direction,
        keys: &TrafficKeys,
    ) -> Result<Option<DeviceKey>, SessionError> {
        let algo = match suite {
            CipherSuite::Aes128Gcm | CipherSuite::Aes256Gcm => {
                sys::rte_crypto_aead_algorithm::RTE_CRYPTO_AEAD_AES_GCM
            }
            CipherSuite::Chacha20Poly1305 => {
                sys::rte_crypto_aead_algorithm::RTE_CRYPTO_AEAD_CHACHA20_POLY1305
            }
        };
        let aad_len: u16 = match version {
            TlsVersion::Tls13 => 5,
            TlsVersion::Tls12 => 13,
        };
        let key = keys.key();
        // SAFETY: the capability index is plain data; the returned pointer (or NULL) is
        // the device's static capability table.
        let supported = unsafe {
            let mut idx: sys::rte_cryptodev_sym_capability_idx = std::mem::zeroed();
            idx.type_ = sys::rte_crypto_sym_xform_type::RTE_CRYPTO_SYM_XFORM_AEAD;
            idx.algo.aead = algo;
            let cap = sys::rte_cryptodev_sym_capability_get(self.dev.id, &idx);
            !cap.is_null()
                && sys::rte_cryptodev_sym_capability_check_aead(
                    cap,
                    key.len() as u16,
                    TAG_LEN as u16,
                    aad_len,
                    12,
                ) == 0
        };
        if !supported {
            tracing::debug!(
                driver = %self.dev.driver,
                %suite,
                "the crypto device does not offer this suite; its records run in software"
            );
            return Ok(None);
        }
        // SAFETY: the xform is fully initialised (zeroed, then every AEAD field set); the
        // key bytes outlive the call (the PMD copies or expands them into its session).
        let sess = unsafe {
            let mut x: sys::rte_crypto_sym_xform = std::mem::zeroed();
            x.type_ = sys::rte_crypto_sym_xform_type::RTE_CRYPTO_SYM_XFORM_AEAD;
            let a = &mut x.__bindgen_anon_1.aead;
            a.op = match dir {
                Direction::Tx => sys::rte_crypto_aead_operation::RTE_CRYPTO_AEAD_OP_ENCRYPT,
                Direction::Rx => sys::rte_crypto_aead_operation::RTE_CRYPTO_AEAD_OP_DECRYPT,
            };
            a.algo = algo;
            a.key.data = key.as_ptr();
            a.key.length = key.len() as u16;
            a.iv.offset = (self.priv_offset + PRIV_IV) as u16;
            a.iv.length = 12;
            a.digest_length = TAG_LEN as u16;
            a.aad_length = aad_len;
            sys::rte_cryptodev_sym_session_create(self.dev.id, &mut x, self.dev.sess_pool)
        };
        if sess.is_null() {
            if !self.pool_warned {
                self.pool_warned = true;
                tracing::warn!(
                    driver = %self.dev.driver,
                    "could not create a cryptodev session (pool of {SESSIONS_PER_DEVICE} full?); \
                     records of such keys run in software"
                );
            }
            return Ok(None);
        }
        Ok(Some(Box::new(DevSession {
            sess,
            dev: Arc::clone(&self.dev),
        })))
    }
}

impl Device {
    /// Claim a crypto device the EAL probed and no engine uses yet.
    fn claim(slots: usize, errors: &mut Vec<String>) -> Option<Device> {
        let mut tried = Vec::new();
        loop {
            let id = {
                let _hotplug = HOTPLUG.lock().unwrap_or_else(|e| e.into_inner());
                let mut taken = claimed();
                // SAFETY: plain queries of the device table (hot-plug is serialised by
                // HOTPLUG, held here).
                let free = (0..unsafe { sys::rte_cryptodev_count() }).find(|id| {
                    !taken.contains(id)
                        && !tried.contains(id)
                        && unsafe { sys::rte_cryptodev_is_valid_dev(*id) } != 0
                })?;
                taken.push(free);
                free
            };
            tried.push(id);
            let mut dev = Device {
                id,
                vdev: None,
                driver: driver_name(id),
                sess_pool: std::ptr::null_mut(),
                op_pool: std::ptr::null_mut(),
                mbuf_pool: std::ptr::null_mut(),
                started: false,
            };
            match dev.setup(slots) {
                Ok(()) => return Some(dev),
                // Dropping `dev` releases the claim.
                Err(e) => errors.push(format!("device {id} ({}): {e}", dev.driver)),
            }
        }
    }

    /// Hot-plug a virtual device of `driver`, configure one queue pair and the pools.
    fn open(driver: Driver, slots: usize) -> Result<Device, String> {
        let n = DEVICE_SEQ.fetch_add(1, Ordering::Relaxed);
        let vdev = cstring(format!("{}_tm{n}", driver.name()));
        // SAFETY: NUL-terminated strings; HOTPLUG serialises hot-plug and removal, and the
        // EAL is up (the caller holds the global lock after `ensure_eal`).
        let (rc, id) = {
            let _hotplug = HOTPLUG.lock().unwrap_or_else(|e| e.into_inner());
            unsafe {
                let rc = sys::rte_eal_hotplug_add(c"vdev".as_ptr(), vdev.as_ptr(), c"".as_ptr());
                let id = if rc < 0 {
                    -1
                } else {
                    sys::rte_cryptodev_get_dev_id(vdev.as_ptr())
                };
                if rc >= 0 && id >= 0 {
                    // Never claimable by another engine.
                    claimed().push(id as u8);
                }
                (rc, id)
            }
        };
        if rc < 0 {
            return Err(format!(
                "could not create the {} virtual device ({}): is its PMD installed \
                 (/usr/lib/x86_64-linux-gnu/dpdk/pmds-*/)?",
                driver.name(),
                strerror(-rc)
            ));
        }
        if id < 0 {
            return Err(format!(
                "{} was plugged but is not a crypto device",
                driver.name()
            ));
        }
        let mut dev = Device {
            id: id as u8,
            vdev: Some(vdev),
            driver: driver.name().to_string(),
            sess_pool: std::ptr::null_mut(),
            op_pool: std::ptr::null_mut(),
            mbuf_pool: std::ptr::null_mut(),
            started: false,
        };
        dev.setup(slots)?;
        Ok(dev)
    }

    /// Configure one queue pair, create the pools, start the device.
    fn setup(&mut self, slots: usize) -> Result<(), String> {
        let n = DEVICE_SEQ.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the device id is valid (looked up by the caller); every pointer passed
        // is to a local, fully initialised struct or a NUL-terminated name; results are
        // checked.
        unsafe {
            let socket = sys::rte_cryptodev_socket_id(self.id);
            let mut conf: sys::rte_cryptodev_config = std::mem::zeroed();
            conf.socket_id = socket;
            conf.nb_queue_pairs = 1;
            let rc = sys::rte_cryptodev_configure(self.id, &mut conf);
            if rc < 0 {
                return Err(format!("rte_cryptodev_configure failed: {}", strerror(-rc)));
            }
            let sess_size = sys::rte_cryptodev_sym_get_private_session_size(self.id);
            self.sess_pool = sys::rte_cryptodev_sym_session_pool_create(
                cstring(format!("tmc{n}_sess")).as_ptr(),
                SESSIONS_PER_DEVICE,
                sess_size,
                0,
                0,
                socket,
            );
            self.op_pool = sys::rte_crypto_op_pool_create(
                cstring(format!("tmc{n}_ops")).as_ptr(),
                sys::rte_crypto_op_type::RTE_CRYPTO_OP_TYPE_SYMMETRIC,
                slots as u32,
                0,
                PRIV_SIZE,
                socket,
            );
            self.mbuf_pool = sys::rte_pktmbuf_pool_create(
                cstring(format!("tmc{n}_mbuf")).as_ptr(),
                slots as u32,
                0,
                0,
                MBUF_ROOM as u16,
                socket,
            );
            if self.sess_pool.is_null() || self.op_pool.is_null() || self.mbuf_pool.is_null() {
                return Err(format!(
                    "could not create the cryptodev pools ({}): not enough DPDK memory",
                    strerror(sys::tm_rte_errno())
                ));
            }
            let qp = sys::rte_cryptodev_qp_conf {
                // One size for every device: a PMD may keep a closed device's ring (by
                // device id) and reuses it only if it is large enough.
                nb_descriptors: (slots as u32).next_power_of_two().max(QP_DESCRIPTORS),
                mp_session: self.sess_pool,
            };
            let rc = sys::rte_cryptodev_queue_pair_setup(self.id, 0, &qp, socket);
            if rc < 0 {
                return Err(format!(
                    "cryptodev queue pair setup failed: {}",
                    strerror(-rc)
                ));
            }
            let rc = sys::rte_cryptodev_start(self.id);
            if rc < 0 {
                return Err(format!("rte_cryptodev_start failed: {}", strerror(-rc)));
            }
            self.started = true;
        }
        Ok(())
    }
}

/// The PMD name of crypto device `id`.
fn driver_name(id: u8) -> String {
    // SAFETY: `id` is a valid device; info is plain data the call fills; driver_name is a
    // static string of the PMD (or NULL).
    unsafe {
        let mut info: sys::rte_cryptodev_info = std::mem::zeroed();
        sys::rte_cryptodev_info_get(id, &mut info);
        if info.driver_name.is_null() {
            format!("cryptodev {id}")
        } else {
            CStr::from_ptr(info.driver_name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: u64 = sys::RTE_CRYPTODEV_FF_SYM_CPU_CRYPTO as u64;
    const HW: u64 = sys::RTE_CRYPTODEV_FF_HW_ACCELERATED as u64;

    /// The best path a device offers, and forced paths it cannot take replaced by one it
    /// can (never external buffers on hardware: DMA needs registered memory).
    #[test]
    fn data_path_follows_the_device_flags() {
        let best = |flags| choose_path(flags, None).0;
        assert_eq!(best(CPU), DataPath::CpuCrypto);
        assert_eq!(best(0), DataPath::ExternalBuffer);
        assert_eq!(best(HW), DataPath::Copy);
        let forced = |flags, p| choose_path(flags, Some(p)).0;
        assert_eq!(forced(0, DataPath::CpuCrypto), DataPath::ExternalBuffer);
        assert_eq!(forced(HW, DataPath::CpuCrypto), DataPath::Copy);
        assert_eq!(forced(HW, DataPath::ExternalBuffer), DataPath::Copy);
        assert_eq!(forced(CPU, DataPath::Copy), DataPath::Copy);
        assert_eq!(
            forced(CPU, DataPath::ExternalBuffer),
            DataPath::ExternalBuffer
        );
        assert!(choose_path(0, Some(DataPath::CpuCrypto))
            .1
            .contains("does not offer it"));
    }

    #[test]
    fn data_path_names_parse_and_bad_ones_are_explained() {
        for p in DataPath::ALL {
            assert_eq!(p.name().parse::<DataPath>(), Ok(p));
        }
        assert_eq!("extbuf".parse::<DataPath>(), Ok(DataPath::ExternalBuffer));
        for bad in ["", "zero-copy", "COPY", "cpu crypto"] {
            let e = bad.parse::<DataPath>().unwrap_err();
            assert!(
                e.contains("expected cpu-crypto, external-buffer or copy"),
                "{e}"
            );
        }
    }
}
