//! tickmesh: a service-mesh data plane for latency-critical systems.
//!
//! The crate is the daemon and the operator's CLI in one binary. One folder a concern:
//! `config` (operator input), `route` (the immutable runtime snapshot), `cluster` (load
//! balancing), `engine` (worker threads and I/O), `proxy` (what a connection's bytes go through), `control` (control socket,
//! persistence), `telemetry` (counters), `net` (socket set-up), `nic` (NIC tuning: `tickmesh nic`), `cli` (commands).

pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod engine;
#[cfg(test)]
mod fuzz_corpus;
pub mod net;
pub mod nic;
pub mod proxy;
pub mod route;
pub mod telemetry;
pub mod tls;
