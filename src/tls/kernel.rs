//! Kernel TLS sides (`offload.backend: ktls` on a kernel with the `tls` module): after
//! the rustls handshake the side's keys go to the socket (`TCP_ULP "tls"`, `TLS_TX`,
//! `TLS_RX`) and from then on the relay moves plaintext through it, like a plaintext side.
//!
//! Owns the hand-over ([`install`]: what rustls still had to send goes out first, records
//! that arrived with the peer's last handshake flight are opened here in software, then
//! the ULP and both keys) and the rare records the kernel does not deliver as data
//! ([`KernelSide::control`]: `close_notify` and other alerts, NewSessionTicket, TLS 1.3
//! KeyUpdate both ways). A side that cannot be handed over cleanly (bytes still on their
//! way to the socket, a partial or non-data record among the leftovers, the kernel
//! refusing the ULP or the suite) stays on the offload engine's ring: [`Fallback`] says why.
//!
//! Never blocks: every socket call here is non-blocking. Off the steady path: the calls
//! are once per connection (hand-over, close) or once per control record, never per
//! application record. Invariant: once TX is in the kernel nothing but [`send_record`]
//! writes non-data records to the socket, and once RX is in the kernel nothing reads
//! ciphertext from it.

use std::os::fd::RawFd;

use rustls::ExtractedSecrets;
use tickmesh_offload::ktls::{self, KtlsError};
use tickmesh_offload::record::{parse_header, RecordKey, HEADER_LEN, MAX_EXPANSION};
use tickmesh_offload::{
    CipherSuite, ContentType, Direction, SessionParams, TlsVersion, TrafficKeys, MAX_PLAINTEXT,
};

use super::records::{alert, JobErrorKind, Kernel, RecordError};

/// Handshake message types after the handshake (RFC 8446 §4, RFC 5246 §7.4).
const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Why a side stays on the offload ring although the engine hands keys to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Bytes towards the socket were still queued or being sent.
    Busy,
    /// The peer's next record had only partly arrived with its handshake flight.
    PartialRecord,
    /// A non-data record (alert, post-handshake message) arrived with the flight.
    ControlRecord,
    /// A record that arrived with the flight did not open (the ring reports it).
    BadRecord,
    /// rustls's last handshake bytes did not all fit in the socket.
    ShortWrite,
    /// The kernel refused the `tls` ULP.
    Ulp,
    /// The kernel refused the keys (suite or version not supported).
    Keys,
}

impl Fallback {
    pub fn reason(self) -> &'static str {
        match self {
            Fallback::Busy => "bytes towards the socket were still in flight",
            Fallback::PartialRecord => "a partial record arrived with the handshake",
            Fallback::ControlRecord => "a non-data record arrived with the handshake",
            Fallback::BadRecord => "a record that arrived with the handshake did not open",
            Fallback::ShortWrite => "the last handshake bytes did not fit in the socket",
            Fallback::Ulp => "the kernel refused the tls ULP",
            Fallback::Keys => "the kernel refused the keys",
        }
    }
}

/// What [`install`] did. Returned once per hand-over, so the size of the fallback
/// variant (rustls's half, handed back) does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Install {
    Done(Box<KernelSide>),
    /// Nothing of the keys reached the kernel: continue on the ring. `sent` bytes of the
    /// handshake output already went to the socket.
    Fallback(Fallback, Kernel, usize),
    /// TX is in the kernel but RX could not follow: the connection cannot continue.
    Broken(KtlsError),
}

/// A side whose records the kernel protects.
pub struct KernelSide {
    kernel: Kernel,
    suite: CipherSuite,
    version: TlsVersion,
    /// Plaintext not yet read by the relay: records that arrived with the handshake
    /// flight, or data a control read returned.
    plain: Vec<u8>,
    plain_off: usize,
    /// The peer sent `close_notify`.
    pub peer_closed: bool,
    /// We sent `close_notify`.
    pub close_sent: bool,
    /// The peer asked for a KeyUpdate that we could not send yet (bytes were in flight
    /// towards it): no more plaintext for this side until it is sent.
    pub key_update_owed: bool,
}

/// What a control record means for the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Consumed (a ticket, a KeyUpdate followed, or data kept for the relay): read on.
    Again,
    /// Nothing was ready after all.
    Empty,
    /// The peer's `close_notify`: the stream ended cleanly.
    Closed,
    /// A fatal alert from the peer, or a message we answered with one.
    Failed(RecordError),
    /// The peer updated its keys and this kernel cannot take new ones (before 6.14).
    RekeyUnsupported,
}

/// The peer's next record: the bytes of whole records at the front of `b` and their
/// count, or `Err(PartialRecord)` when a record is cut.
fn whole_records(b: &[u8]) -> Result<usize, Fallback> {
    let mut at = 0;
    while at < b.len() {
        let h = parse_header(&b[at..]).map_err(|_| Fallback::PartialRecord)?;
        let end = at + HEADER_LEN + usize::from(h.length);
        if end > b.len() {
            return Err(Fallback::PartialRecord);
        }
        at = end;
    }
    Ok(at)
}

/// Open the records that arrived after the last handshake record (`left`) with the RX
/// keys: the plaintext, and how many records it took. Only whole application-data records
/// can be opened here; anything else stays for the ring, which answers it properly.
pub fn open_leftover(
    suite: CipherSuite,
    version: TlsVersion,
    rx: &TrafficKeys,
    left: &[u8],
) -> Result<(Vec<u8>, u64), Fallback> {
    if left.is_empty() {
        return Ok((Vec::new(), 0));
    }
    whole_records(left)?;
    let key = RecordKey::new(suite, version, rx).map_err(|_| Fallback::Keys)?;
    let mut plain = Vec::with_capacity(left.len());
    let mut scratch = Vec::with_capacity(HEADER_LEN + MAX_PLAINTEXT + MAX_EXPANSION);
    let mut at = 0;
    let mut n = 0u64;
    while at < left.len() {
        let h = parse_header(&left[at..]).map_err(|_| Fallback::PartialRecord)?;
        let len = HEADER_LEN + usize::from(h.length);
        if usize::from(h.length) > MAX_PLAINTEXT + MAX_EXPANSION {
            return Err(Fallback::BadRecord);
        }
        scratch.clear();
        scratch.extend_from_slice(&left[at..at + len]);
        let (typ, range) = key
            .open_in_place(rx.seq.wrapping_add(n), &mut scratch, len)
            .map_err(|_| Fallback::BadRecord)?;
        if typ != ContentType::ApplicationData {
            return Err(Fallback::ControlRecord);
        }
        plain.extend_from_slice(&scratch[range]);
        at += len;
        n += 1;
    }
    Ok((plain, n))
}

/// Hand a side whose handshake just ended to the kernel. `idle`: nothing queued or in
/// flight towards the socket; `out`: handshake bytes rustls encoded that the socket has
/// not taken; `left`: bytes received after the last handshake record. No receive may be
/// armed on the socket (the relay calls this from the receive that ended the handshake).
pub fn install(
    fd: RawFd,
    idle: bool,
    version: TlsVersion,
    secrets: &ExtractedSecrets,
    kernel: Kernel,
    out: &[u8],
    left: &[u8],
) -> Install {
    if !idle {
        return Install::Fallback(Fallback::Busy, kernel, 0);
    }
    let params = match SessionParams::from_rustls(version, secrets, 0) {
        Ok(p) => p,
        Err(_) => return Install::Fallback(Fallback::Keys, kernel, 0),
    };
    let (plain, opened) = match open_leftover(params.suite, version, &params.rx, left) {
        Ok(x) => x,
        Err(f) => return Install::Fallback(f, kernel, 0),
    };
    // What rustls still had to send (TLS 1.3 tickets, our Finished) goes out as it is,
    // before TX is in the kernel, which would seal it again.
    let sent = ktls::send_raw(fd, out);
    if sent < out.len() {
        return Install::Fallback(Fallback::ShortWrite, kernel, sent);
    }
    // The engine probed the kernel once at start; a refusal here is per socket.
    if ktls::set_ulp(fd).is_err() {
        // A socket whose ULP attach failed, or one with the ULP and no keys, is still
        // plain TCP: the ring can continue on it.
        return Install::Fallback(Fallback::Ulp, kernel, sent);
    }
    if ktls::install_keys(fd, Direction::Tx, params.suite, version, &params.tx).is_err() {
        return Install::Fallback(Fallback::Keys, kernel, sent);
    }
    let mut rx = params.rx;
    rx.seq = rx.seq.wrapping_add(opened);
    if let Err(e) = ktls::install_keys(fd, Direction::Rx, params.suite, version, &rx) {
        return Install::Broken(e);
    }
    Install::Done(Box::new(KernelSide {
        kernel,
        suite: params.suite,
        version,
        plain,
        plain_off: 0,
        peer_closed: false,
        close_sent: false,
        key_update_owed: false,
    }))
}

/// One post-handshake message of a handshake record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    NewSessionTicket(&'a [u8]),
    /// `update_requested` set.
    KeyUpdate(bool),
    HelloRequest,
    Other(u8),
}

/// The messages in one handshake record's content (a record may carry several; RFC 8446
/// §5.1 forbids one spanning a key change, and a kernel record never spans records of
/// ours: a message cut at the end is a decode error here).
pub fn messages(mut body: &[u8]) -> Result<Vec<Message<'_>>, RecordError> {
    let bad = RecordError::Sent(alert::DECODE_ERROR, JobErrorKind::BadMessage);
    let mut out = Vec::new();
    if body.is_empty() {
        return Err(bad);
    }
    while !body.is_empty() {
        let [typ, a, b, c, rest @ ..] = body else {
            return Err(bad);
        };
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if rest.len() < len {
            return Err(bad);
        }
        let (payload, tail) = rest.split_at(len);
        out.push(match *typ {
            HS_NEW_SESSION_TICKET => Message::NewSessionTicket(payload),
            HS_KEY_UPDATE => match payload {
                [0] => Message::KeyUpdate(false),
                [1] => Message::KeyUpdate(true),
                // RFC 8446 §4.6.3: one byte, 0 or 1.
                _ => return Err(bad),
            },
            HS_HELLO_REQUEST if payload.is_empty() => Message::HelloRequest,
            HS_HELLO_REQUEST => return Err(bad),
            t => Message::Other(t),
        });
        body = tail;
    }
    Ok(out)
}

/// What an alert record says: `Ok(true)` for `close_notify`, `Ok(false)` for a warning to
/// ignore (`user_canceled`), `Err` for a fatal alert or a malformed record.
pub fn read_alert(body: &[u8]) -> Result<bool, RecordError> {
    match body {
        [_, alert::CLOSE_NOTIFY] => Ok(true),
        [_, alert::USER_CANCELED] => Ok(false),
        [_, d] => Err(RecordError::Received(*d)),
        _ => Err(RecordError::Sent(
            alert::DECODE_ERROR,
            JobErrorKind::BadMessage,
        )),
    }
}

/// A KeyUpdate message with `update_not_requested` (RFC 8446 §4.6.3).
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [HS_KEY_UPDATE, 0, 0, 1, 0];

impl KernelSide {
    /// A side for rustls's half `kernel` (tests of the control-record handling).
    #[cfg(test)]
    pub(crate) fn for_test(kernel: Kernel, suite: CipherSuite, version: TlsVersion) -> KernelSide {
        KernelSide {
            kernel,
            suite,
            version,
            plain: Vec::new(),
            plain_off: 0,
            peer_closed: false,
            close_sent: false,
            key_update_owed: false,
        }
    }

    /// Plaintext waits for the relay.
    #[inline]
    pub fn pending(&self) -> bool {
        self.plain_off < self.plain.len()
    }

    /// Waiting plaintext into `out`; `None` when there is none.
    pub fn read_plain(&mut self, out: &mut [u8]) -> Option<usize> {
        let p = &self.plain[self.plain_off..];
        if p.is_empty() {
            return None;
        }
        let n = p.len().min(out.len());
        out[..n].copy_from_slice(&p[..n]);
        self.plain_off += n;
        if self.plain_off == self.plain.len() {
            // Handed over once; the buffer is not needed again.
            self.plain = Vec::new();
            self.plain_off = 0;
        }
        Some(n)
    }

    /// Plaintext for this side may be written to its socket now.
    #[inline]
    pub fn can_take_plain(&self) -> bool {
        !self.key_update_owed && !self.close_sent
    }

    /// A receive on the socket failed with `EIO`: the next record is not application data.
    /// Read and act on it. `tx_idle`: nothing queued or in flight towards the socket (a
    /// KeyUpdate we owe is sent at once then, else later by [`KernelSide::settle`]).
    pub fn control(&mut self, fd: RawFd, tx_idle: bool) -> Control {
        let mut buf = [0u8; MAX_PLAINTEXT + 256];
        let (typ, n) = match ktls::recv_record(fd, &mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Control::Empty,
            Err(_) => {
                return Control::Failed(RecordError::Sent(
                    alert::INTERNAL_ERROR,
                    JobErrorKind::Internal,
                ))
            }
        };
        self.handle(fd, typ, &buf[..n], tx_idle)
    }

    /// Act on one record the kernel returned with its type (`body`: its content).
    /// Alerts we answer with go out through `fd`.
    pub fn handle(&mut self, fd: RawFd, typ: u8, body: &[u8], tx_idle: bool) -> Control {
        match typ {
            ktls::RECORD_ALERT => match read_alert(body) {
                Ok(true) => {
                    self.peer_closed = true;
                    Control::Closed
                }
                Ok(false) => Control::Again,
                Err(e) => self.fail(fd, e),
            },
            ktls::RECORD_HANDSHAKE => match messages(body) {
                Ok(msgs) => {
                    for m in msgs {
                        let r = self.message(fd, m, tx_idle);
                        if r != Control::Again {
                            return r;
                        }
                    }
                    Control::Again
                }
                Err(e) => self.fail(fd, e),
            },
            ktls::RECORD_APPLICATION_DATA => {
                // Data after all (a race with the failed receive): keep it for the relay.
                self.plain.extend_from_slice(body);
                Control::Again
            }
            _ => self.fail(
                fd,
                RecordError::Sent(alert::UNEXPECTED_MESSAGE, JobErrorKind::BadMessage),
            ),
        }
    }

    fn message(&mut self, fd: RawFd, m: Message<'_>, tx_idle: bool) -> Control {
        let unexpected = RecordError::Sent(alert::UNEXPECTED_MESSAGE, JobErrorKind::BadMessage);
        match (m, &mut self.kernel) {
            (Message::NewSessionTicket(p), Kernel::Client(k)) => {
                // Kept by rustls for resumption; a ticket it cannot use is no reason to
                // end the connection.
                let _ = k.handle_new_session_ticket(p);
                Control::Again
            }
            // A client never sends tickets.
            (Message::NewSessionTicket(_), Kernel::Server(_)) => self.fail(fd, unexpected),
            (Message::HelloRequest, Kernel::Client(_)) if self.version == TlsVersion::Tls12 => {
                // RFC 5246 §7.4.1.1: a client may ignore it; we never renegotiate.
                Control::Again
            }
            (Message::KeyUpdate(requested), _) if self.version == TlsVersion::Tls13 => {
                let r = self.rekey(fd, Direction::Rx);
                if r != Control::Again || !requested {
                    return r;
                }
                self.key_update_owed = true;
                if tx_idle {
                    return self.settle(fd);
                }
                Control::Again
            }
            _ => self.fail(fd, unexpected),
        }
    }

    /// Take the next key of `dir` from rustls and give it to the kernel.
    fn rekey(&mut self, fd: RawFd, dir: Direction) -> Control {
        let internal = Control::Failed(RecordError::Sent(
            alert::INTERNAL_ERROR,
            JobErrorKind::Internal,
        ));
        let Ok((seq, secrets)) = self.kernel.update(dir) else {
            return internal;
        };
        let Ok((_, keys)) = tickmesh_offload::rustls_keys::traffic_keys(seq, &secrets) else {
            return internal;
        };
        match ktls::install_keys(fd, dir, self.suite, self.version, &keys) {
            Ok(()) => Control::Again,
            Err(e) if e.rekey_unsupported() => Control::RekeyUnsupported,
            Err(_) => internal,
        }
    }

    /// Send the KeyUpdate we owe the peer (under the old key), then switch TX to the new
    /// key. Call only when nothing is queued or in flight towards the socket.
    pub fn settle(&mut self, fd: RawFd) -> Control {
        if !self.key_update_owed {
            return Control::Again;
        }
        match ktls::send_record(fd, ktls::RECORD_HANDSHAKE, &KEY_UPDATE_NOT_REQUESTED) {
            Ok(()) => {}
            // The socket is full: try again when the relay next finds it idle.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Control::Again,
            Err(_) => {
                return Control::Failed(RecordError::Sent(
                    alert::INTERNAL_ERROR,
                    JobErrorKind::Internal,
                ))
            }
        }
        self.key_update_owed = false;
        self.rekey(fd, Direction::Tx)
    }

    /// Send a fatal alert for `e` when it is ours to send, and report it.
    fn fail(&mut self, fd: RawFd, e: RecordError) -> Control {
        if let RecordError::Sent(desc, _) = e {
            let _ = ktls::send_record(fd, ktls::RECORD_ALERT, &[2, desc]);
            self.close_sent = true;
        }
        Control::Failed(e)
    }

    /// Send `close_notify` (once). Errors are ignored: the socket is being shut anyway.
    pub fn close(&mut self, fd: RawFd) {
        if !self.close_sent {
            let _ = ktls::send_record(fd, ktls::RECORD_ALERT, &[1, alert::CLOSE_NOTIFY]);
            self.close_sent = true;
        }
    }

    /// A receive failed with `-errno` other than `EIO`: the kernel's verdict on a bad
    /// record (`EBADMSG` failed to open, `EMSGSIZE` too large, `EINVAL` wrong version),
    /// answered with the matching alert; `None` for errors that are not about records.
    pub fn record_error(&mut self, fd: RawFd, errno: i32) -> Option<RecordError> {
        let e = match errno {
            libc::EBADMSG => RecordError::Sent(
                alert::BAD_RECORD_MAC,
                JobErrorKind::Job(tickmesh_offload::JobError::BadRecordMac),
            ),
            libc::EMSGSIZE => RecordError::Sent(alert::RECORD_OVERFLOW, JobErrorKind::Oversized),
            libc::EINVAL => RecordError::Sent(alert::DECODE_ERROR, JobErrorKind::BadMessage),
            _ => return None,
        };
        let _ = self.fail(fd, e);
        Some(e)
    }
}

/// The `tls_control` fuzz target (`fuzz/`): one input through the control-record
/// parsers here and in `tickmesh_offload::ktls` and the leftover opener. None may panic,
/// and what they return lies within the input.
pub fn fuzz_one(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let _ = tickmesh_offload::ktls::parse_record_type(rest);
    let _ = read_alert(rest);
    if let Ok(msgs) = messages(rest) {
        for m in msgs {
            if let Message::NewSessionTicket(p) = m {
                assert!(p.len() + 4 <= rest.len());
            }
        }
    }
    let suite = CipherSuite::ALL[usize::from(sel) % CipherSuite::ALL.len()];
    let version = if sel & 0x80 == 0 {
        TlsVersion::Tls13
    } else {
        TlsVersion::Tls12
    };
    let key: Vec<u8> = (0..suite.key_len() as u8).collect();
    let Ok(k) = TrafficKeys::new(suite, &key, [3u8; 12], u64::from(sel)) else {
        return;
    };
    if let Ok((plain, n)) = open_leftover(suite, version, &k, rest) {
        assert!(plain.len() <= rest.len());
        assert!(n as usize <= rest.len() / 5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickmesh_offload::record::MAX_RECORD;

    fn keys(suite: CipherSuite, seq: u64) -> TrafficKeys {
        let key: Vec<u8> = (0..suite.key_len() as u8).collect();
        TrafficKeys::new(suite, &key, [3u8; 12], seq).unwrap()
    }

    fn seal(k: &RecordKey, seq: u64, typ: ContentType, data: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_RECORD];
        let off = k.payload_offset();
        buf[off..off + data.len()].copy_from_slice(data);
        let n = k.seal_in_place(seq, typ, &mut buf, data.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn leftover_records_open_in_order_per_suite_and_version() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for suite in CipherSuite::ALL {
                let k = keys(suite, 7);
                let key = RecordKey::new(suite, version, &k).unwrap();
                let mut wire = seal(&key, 7, ContentType::ApplicationData, b"GET / HTTP/1.1\r\n");
                wire.extend(seal(
                    &key,
                    8,
                    ContentType::ApplicationData,
                    b"Host: x\r\n\r\n",
                ));
                let (plain, n) = open_leftover(suite, version, &k, &wire).unwrap();
                assert_eq!(
                    plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    "{suite} {version}"
                );
                assert_eq!(n, 2, "the kernel's RX starts two records later");
                assert_eq!(
                    open_leftover(suite, version, &k, &[]).unwrap(),
                    (Vec::new(), 0)
                );
            }
        }
    }

    #[test]
    fn leftovers_the_kernel_cannot_continue_from_fall_back() {
        let (suite, version) = (CipherSuite::Aes128Gcm, TlsVersion::Tls13);
        let k = keys(suite, 0);
        let key = RecordKey::new(suite, version, &k).unwrap();
        let rec = seal(&key, 0, ContentType::ApplicationData, &[9u8; 300]);
        // Cut anywhere: inside the header or the body.
        for cut in [1, 4, 5, 6, rec.len() - 1] {
            assert_eq!(
                open_leftover(suite, version, &k, &rec[..cut]),
                Err(Fallback::PartialRecord),
                "cut at {cut}"
            );
        }
        // A whole record then a partial one.
        let mut two = rec.clone();
        two.extend_from_slice(&rec[..10]);
        assert_eq!(
            open_leftover(suite, version, &k, &two),
            Err(Fallback::PartialRecord)
        );
        // A flipped tag bit, or the wrong sequence number.
        let mut bad = rec.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_leftover(suite, version, &k, &bad),
            Err(Fallback::BadRecord)
        );
        assert_eq!(
            open_leftover(suite, version, &keys(suite, 1), &rec),
            Err(Fallback::BadRecord)
        );
        // An alert or a post-handshake message: the ring handles those.
        let a = seal(&key, 0, ContentType::Alert, &[1, 0]);
        assert_eq!(
            open_leftover(suite, version, &k, &a),
            Err(Fallback::ControlRecord)
        );
        // A header announcing more than a record may hold.
        let mut huge = vec![23, 3, 3, 0xff, 0xff];
        huge.resize(5 + 0xffff, 0);
        assert_eq!(
            open_leftover(suite, version, &k, &huge),
            Err(Fallback::BadRecord)
        );
    }

    #[test]
    fn post_handshake_messages_parse_and_malformed_ones_are_decode_errors() {
        let decode = Err(RecordError::Sent(
            alert::DECODE_ERROR,
            JobErrorKind::BadMessage,
        ));
        assert_eq!(
            messages(&[24, 0, 0, 1, 1]),
            Ok(vec![Message::KeyUpdate(true)])
        );
        assert_eq!(
            messages(&[24, 0, 0, 1, 0]),
            Ok(vec![Message::KeyUpdate(false)])
        );
        assert_eq!(
            messages(&[4, 0, 0, 2, 0xaa, 0xbb, 24, 0, 0, 1, 0, 0, 0, 0, 0]),
            Ok(vec![
                Message::NewSessionTicket(&[0xaa, 0xbb]),
                Message::KeyUpdate(false),
                Message::HelloRequest
            ])
        );
        assert_eq!(messages(&[20, 0, 0, 0]), Ok(vec![Message::Other(20)]));
        assert_eq!(messages(&[]), decode, "empty record");
        assert_eq!(messages(&[24, 0, 0]), decode, "header cut");
        assert_eq!(messages(&[24, 0, 0, 2, 1]), decode, "body cut");
        assert_eq!(messages(&[24, 0, 0, 1, 2]), decode, "KeyUpdate value 2");
        assert_eq!(
            messages(&[24, 0, 0, 2, 1, 0]),
            decode,
            "KeyUpdate of 2 bytes"
        );
        assert_eq!(
            messages(&[0, 0, 0, 1, 0]),
            decode,
            "HelloRequest with a body"
        );
        assert_eq!(
            messages(&[4, 0xff, 0xff, 0xff]),
            decode,
            "length past the record"
        );
    }

    #[test]
    fn alerts_are_read() {
        assert_eq!(read_alert(&[1, 0]), Ok(true));
        assert_eq!(read_alert(&[1, 90]), Ok(false));
        assert_eq!(read_alert(&[2, 42]), Err(RecordError::Received(42)));
        let decode = Err(RecordError::Sent(
            alert::DECODE_ERROR,
            JobErrorKind::BadMessage,
        ));
        assert_eq!(read_alert(&[]), decode);
        assert_eq!(read_alert(&[2]), decode);
        assert_eq!(read_alert(&[2, 0, 0]), decode);
    }

    /// Seeded mutations (truncation, bit flips, length bytes set high) of well-formed
    /// control records and leftovers: the fuzz target's oracle on the stable toolchain.
    #[test]
    fn mutated_control_inputs_never_panic() {
        let k = keys(CipherSuite::Aes128Gcm, 1);
        let key = RecordKey::new(CipherSuite::Aes128Gcm, TlsVersion::Tls13, &k).unwrap();
        let mut seeds: Vec<Vec<u8>> = vec![
            vec![0, 1, 0],
            vec![0, 2, 80],
            vec![0, 24, 0, 0, 1, 1],
            vec![0, 4, 0, 0, 6, 0, 0, 0, 1, 0, 0, 24, 0, 0, 1, 0],
            vec![0, 0, 0, 0, 0],
        ];
        let mut rec = vec![0u8];
        rec.extend(seal(&key, 1, ContentType::ApplicationData, b"hello kernel"));
        rec.extend(seal(&key, 2, ContentType::Alert, &[1, 0]));
        seeds.push(rec);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in &seeds {
            fuzz_one(seed);
            for cut in 0..seed.len() {
                fuzz_one(&seed[..cut]);
            }
            for _ in 0..2000 {
                let mut m = seed.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() as usize) % m.len();
                    match next() % 3 {
                        0 => m[at] ^= 1 << (next() % 8),
                        1 => m[at] = 0xff,
                        _ => m.truncate(at.max(1)),
                    }
                }
                m[0] = next() as u8;
                fuzz_one(&m);
            }
        }
    }
}
