//! Codec tests: well-formed messages, and each malformed input the proxy must refuse.

use super::*;

fn req(bytes: &[u8]) -> Result<Option<HeadRepr>, HttpError> {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    parse_request(bytes, &mut h).map(|r| r.map(|r| r.repr))
}

fn req_err(bytes: &[u8]) -> HttpError {
    match req(bytes) {
        Err(e) => e,
        Ok(r) => panic!("accepted {:?}: {r:?}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn simple_get() {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let b = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nrest";
    let r = parse_request(b, &mut h).unwrap().unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.target, "/a?b=1");
    assert_eq!(r.header("HOST"), Some(&b"x"[..]));
    assert_eq!(r.repr.len, b.len() - 4);
    assert_eq!(r.repr.body, Body::None);
    assert!(r.repr.keep_alive);
}

#[test]
fn partial_head_waits() {
    assert_eq!(req(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    assert_eq!(req(b"GET / HT"), Ok(None));
    assert_eq!(req(b""), Ok(None));
}

#[test]
fn bodies_and_persistence() {
    let r = req(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.body, Body::Length(5));
    let r = req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.body, Body::Chunked);
    let r = req(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(r.body, Body::Length(5));
    let r = req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!r.keep_alive);
    let r = req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(r.keep_alive);
    let r = req(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!r.keep_alive);
    let r = req(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(r.upgrade);
    let r = req(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(r.expect_continue);
    // RFC 9112 §2.2: a leading empty line is ignored.
    assert!(req(b"\r\nGET / HTTP/1.1\r\n\r\n").unwrap().is_some());
}

#[test]
fn malformed_request_lines() {
    for bad in [
        &b"GET\r\n\r\n"[..],
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b" / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
    ] {
        assert_eq!(req_err(bad), HttpError::BadRequestLine, "{bad:?}");
    }
}

#[test]
fn http09_is_refused() {
    assert_eq!(req_err(b"GET /\r\n"), HttpError::BadRequestLine);
    assert_eq!(
        req_err(b"GET /index.html\r\n\r\n"),
        HttpError::BadRequestLine
    );
}

#[test]
fn invalid_header_bytes() {
    for bad in [
        &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nNa\x01me: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nName: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nName: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
        // obsolete line folding
        b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
    ] {
        let e = req_err(bad);
        assert!(
            e == HttpError::BadHeader || e == HttpError::BadRequestLine,
            "{bad:?}: {e:?}"
        );
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn oversized_head_is_431() {
    let mut b = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    b.resize(MAX_HEAD + 10, b'a');
    assert_eq!(req_err(&b), HttpError::HeadTooLarge);
    assert_eq!(HttpError::HeadTooLarge.status(), 431);
    // Complete but larger than the cap.
    b.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req_err(&b), HttpError::HeadTooLarge);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(req_err(&many), HttpError::HeadTooLarge);
}

#[test]
fn smuggling_defences() {
    // RFC 9112 §6.3: CL + TE, conflicting CLs, bad CL, TE not chunked.
    let cases: &[(&[u8], HttpError)] = &[
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            HttpError::LengthAndChunked,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            HttpError::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            HttpError::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            HttpError::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            HttpError::BadTransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            HttpError::BadTransferEncoding,
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            req_err(bytes),
            *want,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(want.status(), 400);
    }
}

fn chunked(data: &[u8], limit: u64) -> Result<(usize, bool, u64), HttpError> {
    let mut d = ChunkDecoder::default();
    let n = d.feed(data, limit)?;
    Ok((n, d.done(), d.total))
}

#[test]
fn chunked_ends_where_it_ends() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    let end = body.len() - b"GET / HTTP/1.1\r\n".len();
    assert_eq!(chunked(body, 1000), Ok((end, true, 11)));
    // With trailers.
    let t = b"1\r\na\r\n0\r\nX-T: 1\r\n\r\n";
    assert_eq!(chunked(t, 1000), Ok((t.len(), true, 1)));
    // Byte by byte gives the same answer.
    let mut d = ChunkDecoder::default();
    for (i, b) in body[..end].iter().enumerate() {
        assert_eq!(d.feed(std::slice::from_ref(b), 1000), Ok(1));
        assert_eq!(d.done(), i == end - 1);
    }
    // Incomplete is not done.
    assert_eq!(chunked(b"5\r\nhel", 1000), Ok((6, false, 5)));
}

#[test]
fn invalid_chunks() {
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"5\nhello\r\n",
        b"5\r\nhelloXX",
        b"5\r\nhello\r0",
        b"-1\r\n",
        b"0x5\r\n",
        b"11111111111111111\r\n", // 17 hex digits: overflow
        b"5;a\nb\r\n",
        b"0\r\nTrailer\n",
    ] {
        assert_eq!(chunked(bad, u64::MAX), Err(HttpError::BadChunk), "{bad:?}");
    }
    assert_eq!(
        chunked(b"10\r\n", 15),
        Err(HttpError::BodyTooLarge),
        "chunk sizes count against the body limit"
    );
}

#[test]
fn chunk_size_encoding_round_trips() {
    for len in [0usize, 1, 15, 16, 255, 4096, 16384, usize::MAX] {
        let mut out = [0u8; 18];
        let n = encode_chunk_size(len, &mut out);
        let mut d = ChunkDecoder::default();
        let consumed = d.feed(&out[..n], u64::MAX).unwrap();
        assert_eq!(consumed, n);
        assert_eq!(d.total, len as u64);
    }
}

#[test]
fn responses() {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        &mut h,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.repr.body, Body::Length(3));
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", &mut h, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.repr.body, Body::UntilClose);
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        &mut h,
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.repr.body, Body::None, "HEAD responses have no body");
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", &mut h, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.repr.body, Body::None);
    for bad in [
        &b"garbage garbage\r\n\r\n"[..],
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(
            parse_response(bad, &mut h, false).map(|r| r.map(|r| r.status)),
            Err(HttpError::BadResponse),
            "{bad:?}"
        );
    }
}

/// Deterministic pseudo-random mutations of valid requests: the parser never panics and
/// never accepts a head it then frames ambiguously.
#[test]
fn mutated_requests_never_panic() {
    let seeds: &[&[u8]] = &[
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let s = seeds[(next() % seeds.len() as u64) as usize];
        let mut m = s.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() % m.len() as u64) as usize;
            match next() % 3 {
                0 => m[i] = next() as u8,
                1 => {
                    m.remove(i);
                }
                _ => m.insert(i, next() as u8),
            }
        }
        if let Ok(Some(r)) = req(&m) {
            assert!(r.len <= m.len());
            let mut d = ChunkDecoder::default();
            let _ = d.feed(&m[r.len..], 1 << 20);
        }
    }
}
