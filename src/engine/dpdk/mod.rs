//! The DPDK engine: poll-mode NIC queues and the L4 packet load balancer on them.
//!
//! `wire` (packet views) and `lb` (the balancer's decisions over any [`lb::PacketBuf`])
//! are plain Rust and build without DPDK, so their tests and the fuzz target run
//! everywhere. The parts that touch DPDK — `eal` (EAL start/stop), `port` (ports, queues,
//! mbufs) and `worker` (the lcore loops) — need feature `dpdk` and are the only places
//! here with `unsafe`.

pub mod lb;
pub mod wire;
