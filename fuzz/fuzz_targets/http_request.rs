//! Fuzz the HTTP/1.1 request parser and the chunked decoder behind it: no input may
//! panic, a head reported complete lies within the input, and a chunked body's end is
//! never past the bytes fed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickmesh::proxy::http::codec::{parse_request, Body, ChunkDecoder, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Ok(Some(req)) = parse_request(data, &mut headers) {
        let r = req.repr;
        assert!(r.len <= data.len());
        let body = &data[r.len..];
        match r.body {
            Body::Chunked => {
                let mut d = ChunkDecoder::default();
                // Feed in two pieces: the split must not change the outcome.
                let mid = body.len() / 2;
                let whole = ChunkDecoder::default().feed(body, 1 << 20);
                let a = d.feed(&body[..mid], 1 << 20);
                if let (Ok(n), Ok(w)) = (a, whole) {
                    assert!(n <= mid && w <= body.len());
                    if n == mid && !d.done() {
                        if let Ok(m) = d.feed(&body[mid..], 1 << 20) {
                            assert_eq!(mid + m, w);
                        }
                    }
                }
            }
            Body::Length(n) => assert!(n > 0),
            Body::None | Body::UntilClose => {}
        }
    }
});
