//! tickmesh-offload: TLS record crypto as batched, asynchronous jobs on a submission ring,
//! completed out of a completion ring — the shape DPUs, QAT and DPDK cryptodev expose.
//!
//! Owns: per-connection crypto sessions ([`Engine::create_session`], control side), record
//! jobs at TLS-record level (seal: content type + payload → full record; open: full record
//! → content type + plaintext; the record header is the AAD), preallocated job slots with
//! record-sized buffers, per-session in-flight limits, and the backends that execute jobs
//! ([`backend`]: software inline or threaded with `ring`, kernel TLS hand-over, DPDK
//! cryptodev with feature `dpdk`). The TLS handshake is not here: rustls does it, then
//! hands the traffic keys over ([`SessionParams`]).
//!
//! Must never: block, allocate per job, or panic on any input. Bad records and limits are
//! per-job [`JobError`]s; back-pressure is a [`SubmitError`] at submission.
//!
//! ```
//! use tickmesh_offload::*;
//! let mut engine = Engine::new(EngineConfig { backend: BackendChoice::Software, ..Default::default() }).unwrap();
//! let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[1; 16], [2; 12], 0).unwrap();
//! let id = engine.create_session(&SessionParams {
//!     suite: CipherSuite::Aes128Gcm, version: TlsVersion::Tls13,
//!     tx: keys.clone(), rx: keys, in_flight_limit: 0,
//! }).unwrap();
//! engine.submit_seal(id, 7, ContentType::ApplicationData, b"hello").unwrap();
//! engine.poll_until_idle(1000);
//! let mut record = Vec::new();
//! engine.reap(32, |c| record = c.result.unwrap().data.to_vec());
//! engine.submit_open(id, 8, &record).unwrap();
//! engine.poll_until_idle(1000);
//! engine.reap(32, |c| assert_eq!(c.result.unwrap().data, b"hello"));
//! ```

// `unsafe` only where a syscall or a volatile wipe needs it, opted in per item with a
// reason (kTLS setsockopt, CPU pinning, key wiping, and the DPDK cryptodev module).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
mod engine;
mod error;
mod job;
pub mod record;
#[cfg(feature = "rustls")]
pub mod rustls_keys;
mod suite;

pub use backend::ktls;
pub use backend::{BackendChoice, BackendError, BackendKind};
pub use engine::{calibrate, Engine, EngineConfig, EngineError, EngineStats};
pub use error::{JobError, SubmitError};
pub use job::{Completion, Job, Op, Output, SessionId};
pub use record::{ContentType, MAX_PLAINTEXT, MAX_RECORD};
pub use suite::{CipherSuite, Direction, SessionError, SessionParams, TlsVersion, TrafficKeys};
