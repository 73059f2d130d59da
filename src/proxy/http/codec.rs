//! HTTP/1.1 message framing over `httparse`: request and response heads as zero-copy
//! views with a validated representation of what matters to a proxy (body framing,
//! persistence, upgrade, `Expect`), and the chunked transfer-coding state machine.
//!
//! Owns only parsing and validation; never allocates, never copies body bytes (a
//! chunked body is forwarded verbatim: the decoder only finds where it ends and checks
//! every chunk size). Once [`parse_request`] returned `Ok(Some(..))` the head is
//! well-formed: one unambiguous body length (RFC 9112 §6.3), a method and target made
//! of valid bytes, header names that are tokens and values without control bytes.
//!
//! Not implemented: obsolete line folding (rejected, as RFC 9112 §5.2 allows), request
//! transfer codings other than a single `chunked`, and trailers beyond skipping them.

use httparse::{Header, Status};

/// Largest request or response head we accept (RFC 9112 leaves it to us; Envoy's
/// default is 60 KiB). Beyond it: 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Headers per message; more is answered like an oversized head (431).
pub const MAX_HEADERS: usize = 100;

/// Why a message was refused. `Copy`, for the hot path; the status a downstream gets is
/// [`HttpError::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// Request line malformed, or not HTTP/1.x (HTTP/0.9 included).
    BadRequestLine,
    /// A header name or value holds bytes RFC 9110 §5 does not allow.
    BadHeader,
    /// The head is larger than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] headers.
    HeadTooLarge,
    /// `Content-Length` and `Transfer-Encoding` both present (RFC 9112 §6.3 item 3).
    LengthAndChunked,
    /// Several `Content-Length` values that differ, or one that is not a number.
    BadContentLength,
    /// A transfer coding other than a final `chunked`.
    BadTransferEncoding,
    /// A chunk size line that is not hex, overflows, or a chunk not ended by CRLF.
    BadChunk,
    /// The body is larger than the configured limit.
    BodyTooLarge,
    /// The peer's bytes are not an HTTP/1.x response (upstream side).
    BadResponse,
}

impl HttpError {
    /// The status answered to a downstream client for this error.
    pub fn status(self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::BadResponse => 502,
            _ => 400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HttpError::BadRequestLine => "malformed request line",
            HttpError::BadHeader => "invalid header bytes",
            HttpError::HeadTooLarge => "header section too large",
            HttpError::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            HttpError::BadContentLength => "invalid or conflicting Content-Length",
            HttpError::BadTransferEncoding => "unsupported Transfer-Encoding",
            HttpError::BadChunk => "invalid chunk size",
            HttpError::BodyTooLarge => "body over the limit",
            HttpError::BadResponse => "upstream sent a malformed response",
        }
    }
}

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Responses only: until the upstream closes.
    UntilClose,
}

/// The validated facts about a head a proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRepr {
    /// Bytes of the head, CRLFCRLF included.
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub body: Body,
    /// The connection persists after this message (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// A parsed request: views into the bytes it was parsed from, plus its [`HeadRepr`].
#[derive(Debug)]
pub struct Request<'b, 'h> {
    pub method: &'b str,
    /// The request target as sent (origin form, or absolute form for proxies).
    pub target: &'b str,
    pub headers: &'h [Header<'b>],
    pub repr: HeadRepr,
}

impl<'b> Request<'b, '_> {
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        header(self.headers, name)
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Response<'b, 'h> {
    pub status: u16,
    pub headers: &'h [Header<'b>],
    pub repr: HeadRepr,
}

pub fn header<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn map_err(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::HeaderName | httparse::Error::HeaderValue => HttpError::BadHeader,
        httparse::Error::TooManyHeaders => HttpError::HeadTooLarge,
        _ => HttpError::BadRequestLine,
    }
}

/// Parse a request head from the start of `buf`. `Ok(None)`: incomplete, read more
/// (unless `buf` already holds [`MAX_HEAD`] bytes, which is an error here).
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
) -> Result<Option<Request<'b, 'h>>, HttpError> {
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request.
    let skip = skip_empty_lines(buf);
    let mut req = httparse::Request::new(headers);
    let status = req.parse(&buf[skip..]).map_err(map_err)?;
    let len = match status {
        Status::Complete(n) => n + skip,
        Status::Partial => {
            if buf.len() >= MAX_HEAD {
                return Err(HttpError::HeadTooLarge);
            }
            // HTTP/0.9 (`GET /\r\n`): httparse waits for a version that never comes.
            if let Some(eol) = buf[skip..].iter().position(|&b| b == b'\n') {
                let line = &buf[skip..skip + eol];
                if !line.windows(5).any(|w| w == b"HTTP/") {
                    return Err(HttpError::BadRequestLine);
                }
            }
            return Ok(None);
        }
    };
    if len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequestLine);
    };
    if target.is_empty() || minor > 1 {
        return Err(HttpError::BadRequestLine);
    }
    let headers: &'h [Header<'b>] = req.headers;
    let (body, keep_alive, upgrade) = framing(headers, minor, false)?;
    let body = match body {
        // §6.3 item 7: a request without framing has no body.
        Body::UntilClose => Body::None,
        b => b,
    };
    let expect_continue = header(headers, "expect")
        .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Request {
        method,
        target,
        headers,
        repr: HeadRepr {
            len,
            minor,
            body,
            keep_alive,
            upgrade,
            expect_continue,
        },
    }))
}

/// Bytes of the empty lines (CRLF or bare LF) at the start of `buf`, which precede a
/// start line (RFC 9112 §2.2) and which `httparse` skips too: every reader of a head
/// (the codec, the connection's head finder, sniffing) must skip the same ones.
pub(crate) fn skip_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match buf.get(i..i + 2) {
            Some(b"\r\n") => i += 2,
            _ if buf.get(i) == Some(&b'\n') => i += 1,
            _ => return i,
        }
    }
}

/// Parse a response head; `head_request` and the status decide whether a body follows.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    head_request: bool,
) -> Result<Option<Response<'b, 'h>>, HttpError> {
    let mut res = httparse::Response::new(headers);
    let len = match res.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() >= MAX_HEAD => return Err(HttpError::BadResponse),
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::BadResponse),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(HttpError::BadResponse);
    };
    // `httparse` takes any three digits; RFC 9110 §15 defines 100-599 (we pass on what
    // lies above, as the classes' first codes). Below 100 there is no status to forward.
    if status < 100 || len > MAX_HEAD {
        return Err(HttpError::BadResponse);
    }
    let headers: &'h [Header<'b>] = res.headers;
    let (mut body, keep_alive, upgrade) =
        framing(headers, minor, true).map_err(|_| HttpError::BadResponse)?;
    // RFC 9112 §6.3 items 1-2: no body for HEAD, 1xx, 204, 304.
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        body = Body::None;
    }
    Ok(Some(Response {
        status,
        headers,
        repr: HeadRepr {
            len,
            minor,
            body,
            keep_alive,
            upgrade: upgrade && status == 101,
            expect_continue: false,
        },
    }))
}

/// Body framing and persistence from the headers (RFC 9112 §6.3, §9.3).
fn framing(headers: &[Header], minor: u8, response: bool) -> Result<(Body, bool, bool), HttpError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut close = false;
    let mut keep = false;
    let mut conn_upgrade = false;
    let mut has_upgrade = false;
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            // `5, 5` is one length repeated; anything else conflicting is refused.
            for part in h.value.split(|&b| b == b',') {
                let v = parse_length(part.trim_ascii()).ok_or(HttpError::BadContentLength)?;
                if length.is_some_and(|l| l != v) {
                    return Err(HttpError::BadContentLength);
                }
                length = Some(v);
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, last, once (§6.1: chunked must be final in a request; we
            // apply no other coding, so refuse them rather than mis-frame).
            for part in h.value.split(|&b| b == b',') {
                let p = part.trim_ascii();
                if p.is_empty() {
                    continue;
                }
                if chunked || !p.eq_ignore_ascii_case(b"chunked") {
                    return Err(HttpError::BadTransferEncoding);
                }
                chunked = true;
            }
            te_seen = true;
        } else if n.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
            keep |= has_token(h.value, "keep-alive");
            conn_upgrade |= has_token(h.value, "upgrade");
        } else if n.eq_ignore_ascii_case("upgrade") {
            has_upgrade = true;
        }
    }
    if te_seen && !chunked {
        return Err(HttpError::BadTransferEncoding);
    }
    if chunked && length.is_some() {
        return Err(HttpError::LengthAndChunked);
    }
    if chunked && minor == 0 && !response {
        // §6.1: a server receiving Transfer-Encoding in an HTTP/1.0 request must treat
        // the framing as faulty.
        return Err(HttpError::BadTransferEncoding);
    }
    let body = match (chunked, length) {
        (true, _) => Body::Chunked,
        (false, Some(0)) => Body::None,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::UntilClose,
    };
    let keep_alive = if minor == 0 { keep && !close } else { !close };
    Ok((body, keep_alive, conn_upgrade && has_upgrade))
}

/// A `Content-Length` value: 1*DIGIT, no sign, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

// === chunked transfer coding (RFC 9112 §7.1) ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading hex digits of a chunk size.
    #[default]
    Size,
    /// After the size: extensions up to CR.
    Ext,
    /// Expecting LF after the size line's CR.
    SizeLf,
    Data,
    /// Expecting CR then LF after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines; `line_len` counts the current one.
    Trailer,
    TrailerLf,
    Done,
}

/// Finds where a chunked body ends and validates it, without copying or changing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkDecoder {
    state: ChunkState,
    /// Digits seen in the size, or data bytes left in the chunk.
    size: u64,
    digits: u8,
    line_len: u32,
    /// Sum of chunk sizes so far.
    pub total: u64,
}

/// Longest chunk-size line with extensions, and longest trailer line, we accept.
const MAX_CHUNK_LINE: u32 = 4096;

impl ChunkDecoder {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume body bytes; returns how many belong to this body (all of `data` unless
    /// the body ended inside it). `limit` caps the decoded size (→ `BodyTooLarge`).
    pub fn feed(&mut self, data: &[u8], limit: u64) -> Result<usize, HttpError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match hex(b) {
                    Some(d) => {
                        // 16 hex digits fill a u64: more is an overflow (a classic
                        // smuggling trick is a size that wraps).
                        if self.digits >= 16 {
                            return Err(HttpError::BadChunk);
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.digits += 1;
                        i += 1;
                    }
                    None if self.digits == 0 => return Err(HttpError::BadChunk),
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.state = ChunkState::Ext;
                        self.line_len = 0;
                    }
                    None if b == b'\r' => {
                        self.state = ChunkState::SizeLf;
                        i += 1;
                    }
                    None => return Err(HttpError::BadChunk),
                },
                ChunkState::Ext => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(HttpError::BadChunk);
                    } else {
                        self.line_len += 1;
                        if self.line_len > MAX_CHUNK_LINE {
                            return Err(HttpError::BadChunk);
                        }
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(HttpError::BadChunk);
                    }
                    i += 1;
                    self.total = self.total.saturating_add(self.size);
                    if self.total > limit {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = ChunkState::Trailer;
                        self.line_len = 0;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let n = (self.size as usize).min(data.len() - i);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(HttpError::BadChunk);
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(HttpError::BadChunk);
                    }
                    self.state = ChunkState::Size;
                    i += 1;
                }
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else if b == b'\n' {
                        return Err(HttpError::BadChunk);
                    } else {
                        self.line_len += 1;
                        if self.line_len > MAX_CHUNK_LINE {
                            return Err(HttpError::BadChunk);
                        }
                    }
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(HttpError::BadChunk);
                    }
                    i += 1;
                    if self.line_len == 0 {
                        self.state = ChunkState::Done;
                        return Ok(i);
                    }
                    self.line_len = 0;
                    self.state = ChunkState::Trailer;
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

#[inline]
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Write the chunk-size line for a chunk of `len` bytes into `out`; returns its length
/// (at most 18 bytes). `len == 0` writes the last-chunk line (the caller adds the final
/// CRLF after any trailers).
pub fn encode_chunk_size(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut k = 0;
    loop {
        digits[k] = HEX[n & 0xf];
        k += 1;
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    for j in 0..k {
        out[j] = digits[k - 1 - j];
    }
    out[k] = b'\r';
    out[k + 1] = b'\n';
    k + 2
}

#[cfg(test)]
mod tests;
