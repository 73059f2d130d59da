//! The backend boundary: who executes record jobs once they are on the submission ring.
//!
//! Owns the [`Backend`] trait (the shape of a crypto device driver: enqueue a burst, dequeue
//! a burst — DPDK cryptodev's `enqueue_burst`/`dequeue_burst`) and the selection of one
//! backend per engine instance ([`BackendChoice`] → [`select`]), logged with its reason.
//! Like rustls's `CryptoProvider`, everything above this line (sessions, rings, records)
//! is the same for every backend, and the same test suite runs once per backend.
//!
//! A backend must never block the caller, never allocate per job, and must hand every
//! job it accepted back exactly once (completed or failed).

use std::collections::VecDeque;

use crate::job::Job;
use crate::record::DeviceKey;
use crate::suite::{CipherSuite, Direction, SessionError, TlsVersion, TrafficKeys};

#[cfg(feature = "dpdk")]
pub mod cryptodev;
pub mod ktls;
pub mod software;

/// A record-job executor. Jobs move in as owned boxes and come back out the same way.
pub trait Backend: Send {
    /// Which backend this is (for logs and stats).
    fn kind(&self) -> BackendKind;

    /// Offer the jobs at the front of `sq` to the device (one burst). Takes as many as it
    /// accepts, in order, and leaves the rest; returns how many it took. Never blocks.
    fn enqueue(&mut self, sq: &mut VecDeque<Box<Job>>) -> usize;

    /// Let the device make progress and append up to `max` finished jobs to `cq`, in any
    /// order. Returns how many. Never blocks.
    fn dequeue(&mut self, cq: &mut VecDeque<Box<Job>>, max: usize) -> usize;

    /// Jobs accepted and not yet handed back.
    fn in_device(&self) -> usize;

    /// True for a backend that would run each job on the caller's CPU inside `poll`
    /// anyway: the engine then runs it at submission instead (`Job::run_software`) and
    /// never enqueues it here. Batching gains nothing on the CPU, and running a job while
    /// its freshly copied bytes are in L1 saves reading them back from L2 (1 KiB records:
    /// ~10 ns per record). Default: false (devices, crypto threads).
    fn runs_at_submit(&self) -> bool {
        false
    }

    /// Control side: make the device's own session for one direction's key (a device
    /// keeps key schedules itself). `Ok(None)`: nothing to make, or the device does not
    /// offer this suite — jobs under that key then run in software. Default: `None`.
    fn device_key(
        &mut self,
        _suite: CipherSuite,
        _version: TlsVersion,
        _dir: Direction,
        _keys: &TrafficKeys,
    ) -> Result<Option<DeviceKey>, SessionError> {
        Ok(None)
    }
}

/// The backends that exist (built or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// `ring` AEADs inside [`crate::Engine::poll`], on the caller's thread.
    SoftwareInline,
    /// `ring` AEADs on a dedicated crypto thread, fed through lock-free SPSC rings.
    SoftwareThreaded,
    /// Kernel TLS: keys handed to the socket; the ring itself runs in software.
    Ktls,
    /// DPDK cryptodev (feature `dpdk`).
    Cryptodev,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::SoftwareInline => "software-inline",
            BackendKind::SoftwareThreaded => "software-threaded",
            BackendKind::Ktls => "ktls",
            BackendKind::Cryptodev => "cryptodev",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the operator asked for (config `offload.backend`, CLI `--offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendChoice {
    /// Hardware when present and faster than software at start; software otherwise.
    #[default]
    Auto,
    /// Software, in the caller's poll loop.
    Software,
    /// Software on a dedicated crypto thread (optionally pinned to `cpu`).
    SoftwareThreaded { cpu: Option<usize> },
    /// Kernel TLS where the kernel has it; software otherwise.
    Ktls,
    /// DPDK cryptodev; an error if this build has no `dpdk` feature.
    Cryptodev,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "software" | "software-inline" => Ok(BackendChoice::Software),
            "software-threaded" => Ok(BackendChoice::SoftwareThreaded { cpu: None }),
            "ktls" => Ok(BackendChoice::Ktls),
            "cryptodev" => Ok(BackendChoice::Cryptodev),
            other => Err(format!(
                "unknown offload backend {other:?}: expected auto, software, software-threaded, ktls or cryptodev"
            )),
        }
    }
}

/// Errors choosing a backend: only when the operator asked for something this build or
/// host cannot provide and there is no sensible fallback.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("offload backend `cryptodev` is not available in this binary (built without the `dpdk` feature); rebuild with `--features dpdk` or choose `auto` or `software`")]
    CryptodevNotBuilt,
    #[error("offload backend `cryptodev` could not start: {0}")]
    Cryptodev(String),
    #[error("could not start the crypto thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The outcome of selection: the backend, what it is, and why it was picked.
pub struct Selected {
    pub backend: Box<dyn Backend>,
    pub kind: BackendKind,
    pub reason: String,
    /// Kernel TLS can take keys for sockets (probe succeeded and ktls was chosen).
    pub ktls: bool,
}

/// Record size and job count `auto` measures backends with at start.
const CALIBRATION_RECORD: usize = 1024;
const CALIBRATION_JOBS: usize = 4096;

/// Accelerators present in this build and on this host, best first. Cryptodev devices
/// join this list when the `dpdk` feature brings the backend in.
fn hardware_candidates() -> Vec<BackendChoice> {
    #[cfg(feature = "dpdk")]
    if cryptodev::worth_probing() {
        return vec![BackendChoice::Cryptodev];
    }
    Vec::new()
}

/// Why `auto` found no accelerator to measure.
fn no_hardware_reason() -> &'static str {
    if cfg!(feature = "dpdk") {
        "no crypto device to probe (the DPDK EAL is not running in this process and no \
         cryptodev driver was named: set TICKMESH_CRYPTODEV=crypto_aesni_gcm|crypto_openssl)"
    } else {
        "no crypto accelerator (cryptodev not built in: no `dpdk` feature)"
    }
}

#[cfg(feature = "dpdk")]
fn cryptodev_backend(slots: usize) -> Result<Selected, BackendError> {
    let dev = cryptodev::Cryptodev::open(slots).map_err(BackendError::Cryptodev)?;
    let driver = dev.driver().to_string();
    let path = dev.data_path();
    Ok(Selected {
        backend: Box::new(dev),
        kind: BackendKind::Cryptodev,
        reason: format!("configured: cryptodev ({driver}, one queue pair, data path {path})"),
        ktls: false,
    })
}

#[cfg(not(feature = "dpdk"))]
fn cryptodev_backend(_slots: usize) -> Result<Selected, BackendError> {
    Err(BackendError::CryptodevNotBuilt)
}

/// Pick and build a backend for one engine instance. Logs the choice and the reason.
pub fn select(choice: BackendChoice, slots: usize, batch: usize) -> Result<Selected, BackendError> {
    let selected = match choice {
        BackendChoice::Software => Selected {
            backend: Box::new(software::Inline::new(slots)),
            kind: BackendKind::SoftwareInline,
            reason: "configured: software (inline in the poll loop)".into(),
            ktls: false,
        },
        BackendChoice::SoftwareThreaded { cpu } => Selected {
            backend: Box::new(software::Threaded::start(slots, batch, cpu)?),
            kind: BackendKind::SoftwareThreaded,
            reason: match cpu {
                Some(c) => format!("configured: software on a crypto thread pinned to CPU {c}"),
                None => "configured: software on a crypto thread".into(),
            },
            ktls: false,
        },
        BackendChoice::Ktls => {
            let probe = ktls::probe();
            if probe.available {
                Selected {
                    backend: Box::new(software::Inline::new(slots)),
                    kind: BackendKind::Ktls,
                    reason: format!(
                        "configured: ktls ({}); records the kernel does not own run in software inline",
                        probe.detail
                    ),
                    ktls: true,
                }
            } else {
                Selected {
                    backend: Box::new(software::Inline::new(slots)),
                    kind: BackendKind::SoftwareInline,
                    reason: format!(
                        "configured: ktls, but {}; falling back to software inline",
                        probe.detail
                    ),
                    ktls: false,
                }
            }
        }
        BackendChoice::Cryptodev => cryptodev_backend(slots)?,
        BackendChoice::Auto => {
            let probe = ktls::probe();
            let hardware = hardware_candidates();
            if hardware.is_empty() {
                Selected {
                    backend: Box::new(software::Inline::new(slots)),
                    kind: BackendKind::SoftwareInline,
                    reason: format!(
                        "auto: {}; kernel TLS: {}; picked software inline",
                        no_hardware_reason(),
                        probe.detail
                    ),
                    ktls: false,
                }
            } else {
                // Measure each accelerator against software on the same job mix and keep
                // the faster: a device reached through a slow path loses to AES-NI inline.
                let software_ns = crate::calibrate(
                    BackendChoice::Software,
                    CALIBRATION_RECORD,
                    CALIBRATION_JOBS,
                )
                .unwrap_or(f64::INFINITY);
                let mut best: Option<(BackendChoice, f64)> = None;
                let mut measured = Vec::new();
                for hw in hardware {
                    match crate::calibrate(hw, CALIBRATION_RECORD, CALIBRATION_JOBS) {
                        Ok(ns) => {
                            measured.push(format!("{hw:?} {ns:.0} ns/record"));
                            match best {
                                Some((_, b)) if b <= ns => {}
                                _ => best = Some((hw, ns)),
                            }
                        }
                        Err(e) => measured.push(format!("{hw:?} unavailable ({e})")),
                    }
                }
                match best {
                    Some((hw, ns)) if ns < software_ns => {
                        let mut sel = select(hw, slots, batch)?;
                        sel.reason = format!(
                            "auto: {} measured {ns:.0} ns/record vs software {software_ns:.0} ns/record at {CALIBRATION_RECORD} B; kept the accelerator",
                            sel.kind
                        );
                        sel
                    }
                    _ => Selected {
                        backend: Box::new(software::Inline::new(slots)),
                        kind: BackendKind::SoftwareInline,
                        reason: format!(
                            "auto: software measured {software_ns:.0} ns/record at {CALIBRATION_RECORD} B, no accelerator was faster ({}); picked software inline",
                            measured.join(", ")
                        ),
                        ktls: false,
                    },
                }
            }
        }
    };
    tracing::info!(
        backend = selected.kind.name(),
        reason = %selected.reason,
        "offload backend selected"
    );
    Ok(selected)
}
