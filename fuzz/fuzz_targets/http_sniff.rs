//! Fuzz the sniffing of a listener's first bytes (`tickmesh::proxy::http::fuzz::sniff_one`):
//! HTTP/1.x or not, the same verdict however the bytes are cut, and never "not HTTP"
//! for a request the codec accepts with a registered-shape method.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickmesh::proxy::http::fuzz::sniff_one(data);
});
