//! What travels on the wire for each workload: the request bytes the generator sends and
//! the test that says a response is complete, short, or wrong.
//!
//! Pure functions over byte slices, shared by the generator, the readiness probe and the
//! backend's tests. Never allocates per request: a request is built once per connection
//! and only its sequence number is rewritten.

use crate::args::{HttpMethod, Workload};

/// Echo requests carry their sequence number in the first 8 bytes (little endian), so a
/// late or misrouted reply is recognised.
pub const SEQ_LEN: usize = 8;

/// The Host header every HTTP request carries.
pub const HTTP_HOST: &str = "tickmesh-bench";

/// Build the request a connection will send, for sequence number 0.
pub fn request(workload: Workload, size: usize, method: HttpMethod) -> Vec<u8> {
    match workload {
        Workload::TcpEcho | Workload::UdpEcho | Workload::TlsEcho | Workload::TlsHandshake => {
            let mut v: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            v.resize(size.max(SEQ_LEN), b'a');
            v[..SEQ_LEN].copy_from_slice(&0u64.to_le_bytes());
            v
        }
        Workload::Http1 | Workload::Https1 => match method {
            HttpMethod::Get => {
                format!("GET /bench HTTP/1.1\r\nHost: {HTTP_HOST}\r\n\r\n").into_bytes()
            }
            HttpMethod::Post => {
                let mut v = format!(
                    "POST /bench HTTP/1.1\r\nHost: {HTTP_HOST}\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
                )
                .into_bytes();
                v.extend((0..size).map(|i| b'a' + (i % 26) as u8));
                v
            }
        },
    }
}

/// Stamp `seq` into an echo request (HTTP requests carry none).
#[inline]
pub fn stamp(workload: Workload, req: &mut [u8], seq: u64) {
    if !workload.is_http() {
        req[..SEQ_LEN].copy_from_slice(&seq.to_le_bytes());
    }
}

/// How far a response has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Need more bytes.
    Partial,
    /// Complete and correct.
    Done,
    /// A reply to an earlier request (UDP after a timeout): drop it, keep waiting.
    Stale,
    /// Wrong: the stream can't be trusted any more.
    Bad(&'static str),
}

/// Room a connection's receive buffer needs for one response.
pub fn response_capacity(workload: Workload, size: usize) -> usize {
    match workload {
        Workload::TcpEcho | Workload::UdpEcho | Workload::TlsEcho | Workload::TlsHandshake => {
            size.max(SEQ_LEN)
        }
        // Headers of any proxy's response fit in 4 KiB.
        Workload::Http1 | Workload::Https1 => size + 4096,
    }
}

/// Judge the bytes received so far for request `seq`.
pub fn check(workload: Workload, buf: &[u8], size: usize, seq: u64) -> Response {
    let size = if workload.is_http() {
        size
    } else {
        size.max(SEQ_LEN)
    };
    match workload {
        Workload::TcpEcho | Workload::TlsEcho | Workload::TlsHandshake => {
            if buf.len() < size {
                return Response::Partial;
            }
            if buf.len() > size {
                return Response::Bad("more bytes than were sent");
            }
            if buf[..SEQ_LEN] != seq.to_le_bytes() {
                return Response::Bad("echo of another request");
            }
            Response::Done
        }
        Workload::UdpEcho => {
            if buf.len() != size {
                return Response::Bad("datagram of the wrong size");
            }
            if buf[..SEQ_LEN] != seq.to_le_bytes() {
                return Response::Stale;
            }
            Response::Done
        }
        Workload::Http1 | Workload::Https1 => {
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut resp = httparse::Response::new(&mut headers);
            let head_len = match resp.parse(buf) {
                Ok(httparse::Status::Partial) => return Response::Partial,
                Ok(httparse::Status::Complete(n)) => n,
                Err(_) => return Response::Bad("malformed HTTP response"),
            };
            if resp.code != Some(200) {
                return Response::Bad("HTTP status is not 200");
            }
            let Some(len) = content_length(resp.headers) else {
                return Response::Bad("HTTP response without a valid Content-Length");
            };
            if len != size {
                return Response::Bad("HTTP body of the wrong size");
            }
            match buf.len().cmp(&(head_len + len)) {
                std::cmp::Ordering::Less => Response::Partial,
                std::cmp::Ordering::Equal => Response::Done,
                std::cmp::Ordering::Greater => Response::Bad("bytes after the HTTP response"),
            }
        }
    }
}

/// The Content-Length header's value, if present and a number.
pub fn content_length(headers: &[httparse::Header]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_their_sequence() {
        let mut r = request(Workload::TcpEcho, 64, HttpMethod::Get);
        assert_eq!(r.len(), 64);
        stamp(Workload::TcpEcho, &mut r, 7);
        assert_eq!(check(Workload::TcpEcho, &r[..10], 64, 7), Response::Partial);
        assert_eq!(check(Workload::TcpEcho, &r, 64, 7), Response::Done);
        assert_eq!(
            check(Workload::TcpEcho, &r, 64, 8),
            Response::Bad("echo of another request")
        );
        let mut long = r.clone();
        long.push(0);
        assert!(matches!(
            check(Workload::TcpEcho, &long, 64, 7),
            Response::Bad(_)
        ));
        assert_eq!(check(Workload::UdpEcho, &r, 64, 6), Response::Stale);
        assert!(matches!(
            check(Workload::UdpEcho, &r[..5], 64, 7),
            Response::Bad(_)
        ));
        // tls-echo's plaintext is the TCP echo's.
        assert_eq!(request(Workload::TlsEcho, 64, HttpMethod::Get).len(), 64);
        assert_eq!(check(Workload::TlsEcho, &r, 64, 7), Response::Done);
        assert_eq!(check(Workload::TlsEcho, &r[..63], 64, 7), Response::Partial);
        assert!(matches!(
            check(Workload::TlsEcho, &long, 64, 7),
            Response::Bad(_)
        ));
        // Sizes below the sequence number are padded up to it.
        assert_eq!(
            request(Workload::UdpEcho, 4, HttpMethod::Get).len(),
            SEQ_LEN
        );
    }

    #[test]
    fn http_responses_are_judged() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(check(Workload::Http1, ok, 4, 0), Response::Done);
        assert_eq!(check(Workload::Http1, &ok[..20], 4, 0), Response::Partial);
        assert_eq!(
            check(Workload::Http1, &ok[..ok.len() - 1], 4, 0),
            Response::Partial
        );
        assert!(matches!(check(Workload::Http1, ok, 5, 0), Response::Bad(_)));
        let e = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(
            check(Workload::Http1, e, 4, 0),
            Response::Bad("HTTP status is not 200")
        );
        let no_len = b"HTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(
            check(Workload::Http1, no_len, 4, 0),
            Response::Bad(_)
        ));
        assert!(matches!(
            check(Workload::Http1, b"\x00garbage\r\n\r\n", 4, 0),
            Response::Bad(_)
        ));
        let post = request(Workload::Http1, 16, HttpMethod::Post);
        assert!(post.ends_with(b"\r\n\r\nabcdefghijklmnop"));
    }
}
