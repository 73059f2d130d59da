//! Fuzz the control socket's request line (`tickmesh::control::fuzz::control_one`): a
//! refusal says why, an accepted request encodes and parses back to itself, and an
//! `apply` carries its config text through the config oracle.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickmesh::control::fuzz::control_one(data);
});
