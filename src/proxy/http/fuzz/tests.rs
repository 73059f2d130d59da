//! The fuzz oracles on the stable toolchain: each committed corpus replayed, then
//! seeded mutations of it (byte flips, cuts, insertions of protocol tokens), every
//! `cargo test`. Plus one regression test per bug the oracles found, named after it.

use super::*;
use crate::fuzz_corpus::Mutations;

/// Tokens the mutator splices in: the bytes HTTP framing turns on.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b"-",
    b"0",
    b"\r\n\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Host: a:80\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.0 ",
    b"000 ",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"VERSION-CONTROL ",
];

/// Every seed, every cut of it, then `n` seeded mutations through `one`.
fn exercise(target: &str, n: usize, keep_first: bool, one: fn(&[u8])) {
    let m = Mutations {
        count: n,
        keep_first,
        cut_step: 1,
        tokens: TOKENS,
    };
    crate::fuzz_corpus::exercise(target, &m, one);
}

#[test]
fn http_response_corpus_and_mutations_keep_the_oracle() {
    exercise("http_response", 30_000, true, response_one);
}

#[test]
fn http_request_corpus_and_mutations_keep_the_oracle() {
    exercise("http_request", 30_000, false, request_one);
}

#[test]
fn http_sniff_corpus_and_mutations_keep_the_oracle() {
    exercise("http_sniff", 20_000, false, sniff_one);
}

// === regressions: one test per bug the oracles found, named after it ===

fn status(bytes: &[u8]) -> Result<Option<u16>, codec::HttpError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    codec::parse_response(bytes, &mut hs, false).map(|r| r.map(|r| r.status))
}

/// `HTTP/1.1 000 X` was accepted as status 0 and forwarded as `HTTP/1.1 0 Unknown`,
/// which no client parses (RFC 9110 §15: a status code is three digits, 1xx–5xx).
#[test]
fn response_status_below_100_was_forwarded_unparseable() {
    for line in [
        &b"HTTP/1.1 000 X\r\n\r\n"[..],
        b"HTTP/1.1 099 X\r\n\r\n",
        b"HTTP/1.0 042 Y\r\n\r\n",
    ] {
        assert_eq!(status(line), Err(codec::HttpError::BadResponse), "{line:?}");
        response_one(&[&[0u8][..], line].concat());
    }
    assert_eq!(status(b"HTTP/1.1 100 Continue\r\n\r\n"), Ok(Some(100)));
    assert_eq!(status(b"HTTP/1.1 599 X\r\n\r\n"), Ok(Some(599)));
}

/// A response head over `MAX_HEAD` was accepted by the codec when complete, though the
/// connection refuses one that long (the request side already refused it).
#[test]
fn response_head_over_max_head_was_accepted_by_the_codec() {
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    while big.len() <= MAX_HEAD {
        big.extend_from_slice(
            b"x-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    big.truncate(MAX_HEAD + 10);
    big.extend_from_slice(b"\r\n\r\n");
    let mut hs = vec![httparse::EMPTY_HEADER; 4096];
    assert_eq!(
        codec::parse_response(&big, &mut hs, false).map(|r| r.map(|r| r.status)),
        Err(codec::HttpError::BadResponse)
    );
}

/// Empty lines before a request line (RFC 9112 §2.2: a server SHOULD ignore at least
/// one) were refused with 400 when there were two or more: the connection's head finder
/// took `\r\n\r\n` for an empty head, and the codec called a partial head after three of
/// them HTTP/0.9.
#[test]
fn empty_lines_before_a_request_were_a_400() {
    let full = b"\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let r = codec::parse_request(full, &mut hs).unwrap().unwrap();
    assert_eq!(r.repr.len, full.len());
    assert_eq!(head_end(full), Some(full.len()));
    for k in 0..full.len() {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(
            codec::parse_request(&full[..k], &mut hs).map(|r| r.map(|r| r.repr)),
            Ok(None),
            "cut at {k}"
        );
        assert_eq!(head_end(&full[..k]), None, "cut at {k}");
        assert!(looks_like_http1(&full[..k.max(1)]), "cut at {k}");
    }
    request_one(full);
    // A response is read the same way: empty lines, then the status line.
    let res = b"\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    assert_eq!(head_end(res), Some(res.len()));
    assert_eq!(status(res), Ok(Some(204)));
}

/// Registered methods with a `-` (WebDAV's `VERSION-CONTROL`, `BASELINE-CONTROL`) or
/// longer than 16 letters (`UPDATEREDIRECTREF`) were sniffed as "not HTTP": a listener
/// with a fallback cluster relayed them as opaque TCP, one without answered 400.
#[test]
fn webdav_methods_were_sniffed_as_not_http() {
    for m in [
        "VERSION-CONTROL",
        "BASELINE-CONTROL",
        "UPDATEREDIRECTREF",
        "MKREDIRECTREF",
    ] {
        let req = format!("{m} /f HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(looks_like_http1(req.as_bytes()), "{m}");
        sniff_one(req.as_bytes());
    }
    // What must stay "not HTTP".
    for other in [
        &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
        b"\x16\x03\x01\x00",
        b"PRI * HTTP/2.0\r\n",
        b"-GET /",
        b"*1\r\n",
    ] {
        assert!(!looks_like_http1(other), "{other:?}");
    }
}

fn health(b: &[u8]) -> Option<u16> {
    crate::cluster::active::status_of(b)
}

/// The health check took the status of an interim response (`100 Continue`, `103 Early
/// Hints`) for the answer: a healthy endpoint failed its check (RFC 9110 §15.2: a client
/// must parse 1xx responses it did not expect).
#[test]
fn health_check_took_an_interim_status_for_the_answer() {
    let r = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    assert_eq!(health(r), Some(200));
    assert_eq!(
        health(&r[..30]),
        None,
        "the final status line is still to come"
    );
    assert_eq!(health(b"HTTP/1.1 101 Switching Protocols\r\n"), Some(101));
    response_one(&[&[0u8][..], r].concat());
}

/// The health check needed `\r\n` after the status line; the proxy accepts a bare LF
/// (RFC 9112 §2.2), so an endpoint that served traffic failed its checks.
#[test]
fn health_check_refused_bare_lf_status_lines() {
    assert_eq!(health(b"HTTP/1.1 200 OK\n\n"), Some(200));
    assert_eq!(health(b"HTTP/1.0 503 Busy\nx: y\n"), Some(503));
}

/// The health check read `+20` as status 20 (`str::parse` takes a sign); a status is
/// three digits.
#[test]
fn health_check_read_a_signed_status() {
    assert_eq!(health(b"HTTP/1.1 +20 OK\r\n"), Some(0));
    assert_eq!(health(b"HTTP/1.1 020 OK\r\n"), Some(0));
    assert_eq!(health(b"HTTP/1.1 200 OK\r\n"), Some(200));
}
