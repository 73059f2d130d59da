//! Fuzz what a kernel-TLS socket hands back that is not application data: the
//! `recvmsg` control buffer (record type), alert and post-handshake message records, and
//! the records that arrive with a peer's last handshake flight. No input may panic; what
//! the parsers return lies within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickmesh::tls::kernel::fuzz_one(data);
});
