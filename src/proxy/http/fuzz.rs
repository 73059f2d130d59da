//! Oracles for the HTTP fuzz targets (`fuzz/fuzz_targets/http_*.rs`) and for the
//! stable-toolchain tests that replay their corpora with seeded mutations.
//!
//! Each `*_one` function runs one input through the parsers that read a peer's bytes
//! exactly as the proxy chains them — the head finder the connection uses
//! (`conn::head_end`), the codec, the body framing (`conn::Left`), the sniffing of a
//! listener's first bytes, the health checker's status reader — and asserts properties
//! stronger than "does not panic": a head lies within the input and is found where the
//! codec finds it, a prefix of an acceptable message is never refused (so how TCP splits
//! the bytes cannot change the outcome), framing never claims more bytes than it was fed
//! and ends where it ends whether fed whole or in two pieces, and a parsed head written
//! out the way the proxy writes it parses to the same message.
//!
//! Allocates and is slow on purpose: for fuzzing and tests only, never the data path.

use super::codec::{self, Body, HeadRepr, MAX_HEAD, MAX_HEADERS};
use super::conn::{head_end, looks_like_http1, Left};

/// A few cut points inside `0..len` derived from the input, so each run checks the
/// prefixes at different places without an O(n²) sweep.
fn cuts(len: usize, salt: usize) -> impl Iterator<Item = usize> {
    let picks = [
        1,
        len / 2,
        len / 3,
        len.saturating_sub(1),
        salt % len.max(1),
    ];
    picks.into_iter().filter(move |&k| k < len)
}

fn salt(data: &[u8]) -> usize {
    data.iter()
        .fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b as usize))
}

/// `(name, value)` pairs of a parsed header list, owned.
fn pairs(hs: &[httparse::Header]) -> Vec<(String, Vec<u8>)> {
    hs.iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// A body framing fed whole and fed in two pieces split at `mid`: both claim the same
/// bytes, never more than fed, and agree on whether the body ended.
fn framing_is_split_invariant(body: Body, rest: &[u8], mid: usize) {
    let mid = mid.min(rest.len());
    let mut whole = Left::of(body);
    let w = whole.feed(rest, 1 << 40);
    let mut split = Left::of(body);
    let a = split.feed(&rest[..mid], 1 << 40);
    match (w, a) {
        (Ok(w), Ok(a)) => {
            assert!(
                w <= rest.len(),
                "framing claims {w} of {} bytes",
                rest.len()
            );
            assert!(a <= mid, "framing claims {a} of {mid} bytes");
            if a < mid {
                // The body ended inside the first piece: it ends there fed whole too.
                assert!(split.done(), "stopped early without an end");
                assert_eq!(w, a, "the end moved with the split");
                assert!(whole.done());
                return;
            }
            match split.feed(&rest[mid..], 1 << 40) {
                Ok(b) => {
                    assert_eq!(a + b, w, "the end moved with the split");
                    assert_eq!(split.done(), whole.done());
                }
                Err(e) => panic!("split feed failed ({e:?}) where the whole feed took {w}"),
            }
        }
        (Err(_), Ok(a)) if a == mid => {
            // The error lies in the second piece: it must show there.
            assert!(
                split.feed(&rest[mid..], 1 << 40).is_err(),
                "an error fed whole vanished when split"
            );
        }
        (Err(_), Ok(_)) => panic!("the body ended before an error the whole feed saw"),
        (Ok(_), Err(e)) => panic!("a prefix was refused ({e:?}) that the whole feed took"),
        (Err(_), Err(_)) => {}
    }
}

// === upstream responses ===

/// The `http_response` target: the first byte's low bit says whether the request was a
/// `HEAD`; the rest is what an upstream sent. Interim (1xx) heads are skipped as the
/// proxy and the shadows do, up to 8.
pub fn response_one(data: &[u8]) {
    let Some((&ctl, mut up)) = data.split_first() else {
        return;
    };
    let head_request = ctl & 1 == 1;
    health_status_agrees(up);
    for _ in 0..8 {
        let Some(r) = response_head(up, head_request, ctl as usize) else {
            return;
        };
        let rest = &up[r.len..];
        framing_is_split_invariant(r.body, rest, ctl as usize >> 1);
        if !r.interim {
            return;
        }
        up = rest;
    }
}

struct Parsed {
    len: usize,
    body: Body,
    interim: bool,
}

/// One response head at the start of `up`, checked against every property; `None` when
/// there is none (incomplete or refused).
fn response_head(up: &[u8], head_request: bool, salt: usize) -> Option<Parsed> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = codec::parse_response(up, &mut hs, head_request);
    match parsed {
        Ok(None) => {
            assert!(up.len() < MAX_HEAD, "an oversized partial head waits");
            assert_eq!(
                head_end(up),
                None,
                "the connection would take a head the codec lacks"
            );
            None
        }
        Err(_) => {
            // More bytes never repair a refused head.
            let mut more = up.to_vec();
            more.extend_from_slice(b"\r\n\r\n");
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            assert!(codec::parse_response(&more, &mut hs, head_request).is_err());
            None
        }
        Ok(Some(res)) => {
            let r = res.repr;
            assert!(r.len <= up.len());
            assert_eq!(
                head_end(up),
                Some(r.len),
                "the connection's head finder disagrees"
            );
            assert!((100..=999).contains(&res.status), "status {}", res.status);
            let interim = (100..200).contains(&res.status) && res.status != 101;
            let no_body =
                head_request || (100..200).contains(&res.status) || matches!(res.status, 204 | 304);
            if no_body {
                assert_eq!(r.body, Body::None, "status {} carries a body", res.status);
            }
            if let Body::Length(n) = r.body {
                assert!(n > 0);
            }
            // Parsing the head alone gives the same message.
            let mut hs2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let alone = codec::parse_response(&up[..r.len], &mut hs2, head_request)
                .expect("the head alone parses")
                .expect("the head alone is complete");
            assert_eq!((alone.status, alone.repr), (res.status, r));
            assert_eq!(pairs(alone.headers), pairs(res.headers));
            // Any prefix waits for more: never refused, never complete.
            for k in cuts(r.len, salt) {
                let mut hs3 = [httparse::EMPTY_HEADER; MAX_HEADERS];
                assert!(
                    matches!(
                        codec::parse_response(&up[..k], &mut hs3, head_request),
                        Ok(None)
                    ),
                    "a {k}-byte prefix of a good head is not just incomplete"
                );
                assert_eq!(head_end(&up[..k]), None);
            }
            // Written out as the proxy writes it (`HTTP/1.1 <status> <reason>`, then
            // `name: value` lines), it parses to the same status, headers and framing.
            let mut out = format!("HTTP/1.1 {} X\r\n", res.status).into_bytes();
            for h in res.headers {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            let mut hs4 = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match codec::parse_response(&out, &mut hs4, head_request) {
                Ok(Some(again)) => {
                    assert_eq!(again.status, res.status);
                    assert_eq!(again.repr.body, r.body);
                    assert_eq!(again.repr.len, out.len());
                    assert_eq!(pairs(again.headers), pairs(res.headers));
                }
                other => panic!(
                    "the re-written head {:?} does not parse: {:?}",
                    String::from_utf8_lossy(&out),
                    other.map(|o| o.map(|o| o.status))
                ),
            }
            Some(Parsed {
                len: r.len,
                body: r.body,
                interim,
            })
        }
    }
}

/// The active health check reads only the final status line; it must agree with the
/// codec wherever the codec parses a final head, and never change its mind as bytes come.
fn health_status_agrees(up: &[u8]) {
    let full = crate::cluster::active::status_of(up);
    if let Some(s) = full {
        assert!(s == 0 || (100..=999).contains(&s), "health status {s}");
    }
    for k in cuts(up.len(), salt(up)) {
        let p = crate::cluster::active::status_of(&up[..k]);
        assert!(
            p.is_none() || p == full,
            "status {p:?} from a prefix, {full:?} whole"
        );
    }
    // The codec's view: skip interim heads, then the final status.
    let mut at = up;
    for _ in 0..8 {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match codec::parse_response(at, &mut hs, true) {
            Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => {
                at = &at[r.repr.len..];
            }
            Ok(Some(r)) => {
                assert_eq!(full, Some(r.status), "the health check read another status");
                return;
            }
            _ => return,
        }
    }
}

// === requests ===

/// The `http_request` target: a client's bytes. The head, its body framing (chunked or
/// by length), sniffing, the shadow copy's rewrite.
pub fn request_one(data: &[u8]) {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let salt = salt(data);
    let req = match codec::parse_request(data, &mut hs) {
        Ok(Some(r)) => r,
        Ok(None) => {
            assert_eq!(
                head_end(data),
                None,
                "the connection would take a head the codec lacks"
            );
            return;
        }
        Err(_) => {
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n\r\n");
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            assert!(
                codec::parse_request(&more, &mut hs).is_err(),
                "more bytes repaired a refused head"
            );
            return;
        }
    };
    let r = req.repr;
    assert!(r.len <= data.len());
    assert!(r.len <= MAX_HEAD);
    assert_eq!(
        head_end(data),
        Some(r.len),
        "the connection's head finder disagrees"
    );
    if let Body::Length(n) = r.body {
        assert!(n > 0);
    }
    assert!(
        !matches!(r.body, Body::UntilClose),
        "a request body until close"
    );
    for k in cuts(r.len, salt) {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let p = codec::parse_request(&data[..k], &mut hs).map(|p| p.map(|p| p.repr));
        assert_eq!(p, Ok(None), "a {k}-byte prefix of a good head");
        assert_eq!(head_end(&data[..k]), None);
    }
    // A method of the IANA registry's shape (uppercase letters and `-`) is HTTP to the
    // sniffer, however the first bytes are cut — `PRI` aside, HTTP/2's preface.
    let iana = req.method.len() <= 20
        && req.method.starts_with(|c: char| c.is_ascii_uppercase())
        && req
            .method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-')
        && !req.method.starts_with("PRI");
    let lead = data
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if iana && lead <= 2 {
        for k in [data.len(), lead + 1, lead + req.method.len(), r.len] {
            assert!(
                looks_like_http1(&data[..k.min(data.len())]),
                "sniffing diverts a request with method {:?} cut at {k}",
                req.method
            );
        }
    }
    // Written out as the proxy writes it, it parses the same.
    let mut out = format!("{} {} HTTP/1.{}\r\n", req.method, req.target, r.minor).into_bytes();
    for h in req.headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let mut shadow = Vec::new();
    super::shadow::shadow_head(&out, &mut shadow);
    out.extend_from_slice(b"\r\n");
    let mut hs2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let again = codec::parse_request(&out, &mut hs2)
        .unwrap_or_else(|e| {
            panic!(
                "re-written head refused ({e:?}): {:?}",
                String::from_utf8_lossy(&out)
            )
        })
        .expect("the re-written head is complete");
    assert_eq!((again.method, again.target), (req.method, req.target));
    assert_eq!(pairs(again.headers), pairs(req.headers));
    assert_eq!(
        HeadRepr {
            len: r.len,
            ..again.repr
        },
        r
    );
    // The shadow's copy: the same request, `Host` aside.
    shadow.extend_from_slice(b"\r\n");
    let mut hs3 = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Ok(Some(s)) = codec::parse_request(&shadow, &mut hs3) {
        assert_eq!((s.method, s.target), (req.method, req.target));
        assert_eq!(s.headers.len(), req.headers.len());
        assert_eq!(s.repr.body, r.body);
    } else if shadow.len() <= MAX_HEAD {
        panic!(
            "the shadow copy {:?} does not parse",
            String::from_utf8_lossy(&shadow)
        );
    }
    routing_inputs(&req);
    // The body that follows, fed whole and split.
    let rest = &data[r.len..];
    framing_is_split_invariant(r.body, rest, salt % (rest.len() + 1));
}

/// The values routing and hash policies take from a request (query parameters, cookies,
/// headers): each found value lies inside the bytes it was taken from, and every
/// parameter or cookie the request names is found.
fn routing_inputs(req: &codec::Request) {
    use crate::route::http::RequestView;
    let within = |outer: &[u8], inner: &[u8]| {
        let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
        assert!(
            i >= o && i + inner.len() <= o + outer.len(),
            "a value outside its source"
        );
    };
    let target = req.target.as_bytes();
    let query = target
        .iter()
        .position(|&b| b == b'?')
        .map_or(&target[target.len()..], |i| &target[i + 1..]);
    let view = RequestView {
        method: req.method.as_bytes(),
        path: target,
        query,
        host: req.header("host").unwrap_or_default(),
        headers: req.headers,
    };
    for kv in query.split(|&b| b == b'&') {
        let k = kv.split(|&b| b == b'=').next().unwrap_or_default();
        if let Ok(name) = std::str::from_utf8(k) {
            let v = view
                .query_param(name)
                .expect("a named query parameter is found");
            within(query, v);
        }
    }
    for h in req.headers {
        assert!(view.header(h.name).is_some());
        if !h.name.eq_ignore_ascii_case("cookie") {
            continue;
        }
        for pair in h.value.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = &pair[..eq];
            let v = crate::route::cookie(h.value, name).expect("a named cookie is found");
            within(h.value, v);
        }
    }
}

// === sniffing ===

/// The `http_sniff` target: a listener's first bytes. The verdict on bytes that end
/// inside a plausible method is "HTTP"; once a verdict says not HTTP, more bytes never
/// make it HTTP (a client that is not diverted whole is not diverted in pieces either).
pub fn sniff_one(data: &[u8]) {
    let full = looks_like_http1(data);
    for k in 0..data.len().min(24) {
        let p = looks_like_http1(&data[..k]);
        if full && !data.starts_with(b"PRI") {
            assert!(p, "HTTP whole, not HTTP cut at {k}");
        }
    }
    request_one(data);
}

#[cfg(test)]
mod tests;
