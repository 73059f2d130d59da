//! Fuzz a client's bytes through the HTTP/1.1 request head parser, the connection's head
//! finder and the body framing behind them (`tickmesh::proxy::http::fuzz::request_one`):
//! no input may panic; a complete head lies within the input and is found where the
//! connection looks for it; no prefix of a good head is refused; the head written out
//! as the proxy writes it (and the shadow copy's) parses the same; a body ends in the
//! same place fed whole or in two pieces, never past the bytes fed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickmesh::proxy::http::fuzz::request_one(data);
});
