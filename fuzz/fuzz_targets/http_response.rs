//! Fuzz what an upstream sends back (`tickmesh::proxy::http::fuzz::response_one`; the
//! first byte's low bit: the request was a `HEAD`): the response head parser, interim
//! (1xx) heads, bodies on HEAD/1xx/204/304, the body framing (length, chunked, until
//! close) fed whole and split, the re-written head, and the active health check's
//! status reader against the codec. No input may panic or break a property.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickmesh::proxy::http::fuzz::response_one(data);
});
