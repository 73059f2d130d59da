//! Any byte string as an Ethernet frame arriving on a DPDK data port: the balancer must
//! return a verdict without panicking, and whatever it forwards must still parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickmesh::engine::dpdk::lb::fuzz_one;

fuzz_target!(|data: &[u8]| {
    fuzz_one(data);
});
