//! The record layer of one TLS side once its handshake is done: records are sealed and
//! opened by the worker's offload engine ([`tickmesh_offload::Engine`]) as batched,
//! asynchronous jobs; rustls keeps only what the kernel-TLS API leaves it
//! ([`rustls::kernel::KernelConnection`]: the next traffic secrets on a KeyUpdate, and
//! session tickets a server sends to us as a client).
//!
//! Owns four fixed buffers allocated once at hand-over (never per record): received
//! ciphertext (`rx`; records from `rx.start` to `rx.mark` are in flight, kept until their
//! completion so a KeyUpdate can resubmit the ones behind it under the new key), decrypted
//! plaintext waiting for the relay (`plain`), plaintext waiting to be sealed (`txp`) and
//! sealed records waiting for the socket (`txc`). A job is submitted only when its output
//! has room reserved, so a completion never has to wait or allocate.
//!
//! Invariants: the engine hands this side's completions back in submission order per
//! direction (the engine guarantees it per session); nothing here blocks; every protocol
//! failure becomes exactly one [`RecordError`] and, where the RFC asks for one, a fatal
//! alert sealed under the current key. Post-handshake messages handled here:
//! KeyUpdate (RFC 8446 §4.6.3, both directions, answered when the peer requests it, and
//! sent by us before the AEAD's confidentiality limit), NewSessionTicket (handed to rustls
//! on the client side; on the server side rustls sent its tickets before the hand-over and
//! a client must never send one: `unexpected_message`), alerts (`close_notify` ends the
//! stream, a fatal alert fails it), oversized records (`record_overflow`) and sequence
//! number exhaustion (the connection closes).

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use tickmesh_offload::record::{HEADER_LEN, MAX_EXPANSION, TAG_LEN};
use tickmesh_offload::{
    CipherSuite, Completion, ContentType, Direction, Engine, JobError, Op, SessionId, SubmitError,
    TlsVersion, MAX_PLAINTEXT,
};

/// TLS alert descriptions (RFC 8446 §6).
pub mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const USER_CANCELED: u8 = 90;
}

/// Handshake message types seen after the handshake (RFC 8446 §4).
const HS_HELLO_REQUEST: u8 = 0;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;

/// Largest ciphertext body a peer may send (RFC 8446 §5.2: 2^14 + 256).
const MAX_BODY: usize = MAX_PLAINTEXT + MAX_EXPANSION;
/// Buffer sizes. `rx` holds a partial record plus one receive.
const RX_CAP: usize = HEADER_LEN + MAX_BODY + crate::proxy::l4::tcp::BUF_SIZE;
const PLAIN_CAP: usize = MAX_PLAINTEXT + 1024;
const TXP_CAP: usize = crate::proxy::l4::tcp::BUF_SIZE;
const TXC_CAP: usize = MAX_PLAINTEXT + 1024;
/// Records sealed under one key before we update it ourselves: below the AES-GCM limit
/// of 2^24.5 full-size records (RFC 8446 §5.5), as rustls does.
pub const KEY_UPDATE_AFTER: u64 = 1 << 24;

/// Why a TLS side failed after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The peer's record or message was bad; this fatal alert goes back to it.
    Sent(u8, JobErrorKind),
    /// The peer sent a fatal alert.
    Received(u8),
    /// Sequence numbers or keys ran out; closed without an alert.
    Exhausted,
}

/// What went wrong with a record, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobErrorKind {
    Job(JobError),
    Oversized,
    BadMessage,
    Internal,
}

/// rustls's half after the hand-over.
pub enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    pub(super) fn update(
        &mut self,
        dir: Direction,
    ) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match (self, dir) {
            (Kernel::Server(k), Direction::Tx) => k.update_tx_secret(),
            (Kernel::Server(k), Direction::Rx) => k.update_rx_secret(),
            (Kernel::Client(k), Direction::Tx) => k.update_tx_secret(),
            (Kernel::Client(k), Direction::Rx) => k.update_rx_secret(),
        }
    }
}

/// A byte buffer consumed from the front, appended at the back, compacted when the back
/// runs out. `mark` is a cursor between `start` and `end` kept across compaction.
struct Lin {
    buf: Box<[u8]>,
    start: usize,
    mark: usize,
    end: usize,
}

impl Lin {
    fn new(cap: usize) -> Lin {
        Lin {
            buf: vec![0u8; cap].into_boxed_slice(),
            start: 0,
            mark: 0,
            end: 0,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Forget the contents (a reused buffer starts empty).
    fn clear(&mut self) {
        self.start = 0;
        self.mark = 0;
        self.end = 0;
    }

    /// Bytes that can still be appended (after compaction).
    #[inline]
    fn room(&self) -> usize {
        self.buf.len() - self.len()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.mark -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Append `d`; the caller checked `room()`.
    fn push(&mut self, d: &[u8]) {
        if self.buf.len() - self.end < d.len() {
            self.compact();
        }
        let n = d.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&d[..n]);
        self.end += n;
    }

    fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        self.mark = self.mark.max(self.start);
        if self.start == self.end {
            self.start = 0;
            self.mark = 0;
            self.end = 0;
        }
    }
}

/// The four fixed buffers of one record layer. Kept by the worker ([`super::conn::Crypto`])
/// when a connection ends and handed to the next hand-over, so a full handshake does not
/// allocate and zero ~84 KiB each time.
pub struct RecordBufs {
    rx: Lin,
    plain: Lin,
    txp: Lin,
    txc: Lin,
}

impl RecordBufs {
    pub fn new() -> RecordBufs {
        RecordBufs {
            rx: Lin::new(RX_CAP),
            plain: Lin::new(PLAIN_CAP),
            txp: Lin::new(TXP_CAP),
            txc: Lin::new(TXC_CAP),
        }
    }

    /// Bytes these buffers hold (for the worker's bound on spares).
    pub const SIZE: usize = RX_CAP + PLAIN_CAP + TXP_CAP + TXC_CAP;
}

impl Default for RecordBufs {
    fn default() -> Self {
        RecordBufs::new()
    }
}

/// The parameters of a side's records, from the negotiated suite and version.
#[derive(Debug, Clone, Copy)]
struct Format {
    version: TlsVersion,
    /// Bytes a sealed record adds to its payload, header included.
    seal_overhead: usize,
    /// Bytes of a received record's body that are never plaintext.
    open_overhead: usize,
}

impl Format {
    fn new(version: TlsVersion, suite: CipherSuite) -> Format {
        let explicit = match (version, suite) {
            (TlsVersion::Tls12, CipherSuite::Aes128Gcm | CipherSuite::Aes256Gcm) => 8,
            _ => 0,
        };
        let inner_type = usize::from(version == TlsVersion::Tls13);
        Format {
            version,
            seal_overhead: HEADER_LEN + explicit + TAG_LEN + inner_type,
            open_overhead: explicit + TAG_LEN + inner_type,
        }
    }
}

/// One TLS side's record layer.
pub struct Records {
    kernel: Kernel,
    session: SessionId,
    fmt: Format,
    rx: Lin,
    rx_inflight: u16,
    /// Completions still to come for records submitted under a key a KeyUpdate replaced:
    /// ignored, the records were resubmitted.
    rx_discard: u16,
    plain: Lin,
    plain_reserved: usize,
    /// A post-handshake message split over records.
    hs: Vec<u8>,
    txp: Lin,
    tx_inflight: u16,
    txc: Lin,
    txc_reserved: usize,
    tx_since_update: u64,
    /// Records sealed under one key before we send a KeyUpdate.
    pub key_update_after: u64,
    rx_rekey: bool,
    answer_key_update: bool,
    close_wanted: bool,
    close_sent: bool,
    /// The peer's `close_notify` was opened: the stream ended cleanly.
    pub peer_closed: bool,
    /// The socket reached EOF.
    pub socket_eof: bool,
    end_reported: bool,
    alert: Option<u8>,
    alert_sent: bool,
    /// Failed for good (the error may already have been taken by the relay).
    dead: bool,
    error: Option<RecordError>,
    /// Records completed through the engine and not yet counted in stats.
    uncounted: u32,
}

impl Records {
    /// A record layer for a session already created in `engine`, on `bufs` (fresh, or
    /// a spare set from an ended connection: their contents are ignored). `pending_out`
    /// are handshake bytes rustls encoded that the socket has not taken yet; `rx_left`
    /// are bytes received after the last handshake record.
    pub fn new(
        kernel: Kernel,
        session: SessionId,
        version: TlsVersion,
        suite: CipherSuite,
        pending_out: &[u8],
        rx_left: &[u8],
        bufs: RecordBufs,
    ) -> Records {
        let RecordBufs {
            mut rx,
            mut plain,
            mut txp,
            mut txc,
        } = bufs;
        for b in [&mut rx, &mut plain, &mut txp, &mut txc] {
            b.clear();
        }
        if txc.buf.len() < pending_out.len() {
            // More handshake output than a record buffer (a huge certificate chain the
            // socket has not taken yet): this connection gets a larger one.
            txc = Lin::new(pending_out.len());
        }
        let mut r = Records {
            kernel,
            session,
            fmt: Format::new(version, suite),
            rx,
            rx_inflight: 0,
            rx_discard: 0,
            plain,
            plain_reserved: 0,
            hs: Vec::new(),
            txp,
            tx_inflight: 0,
            txc,
            txc_reserved: 0,
            tx_since_update: 0,
            key_update_after: KEY_UPDATE_AFTER,
            rx_rekey: false,
            answer_key_update: false,
            close_wanted: false,
            close_sent: false,
            peer_closed: false,
            socket_eof: false,
            end_reported: false,
            alert: None,
            alert_sent: false,
            dead: false,
            error: None,
            uncounted: 0,
        };
        r.txc.push(pending_out);
        r.rx.push(&rx_left[..rx_left.len().min(RX_CAP)]);
        r
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    /// rustls's half (tests that drive it without the engine).
    #[cfg(test)]
    pub(crate) fn into_kernel(self) -> Kernel {
        self.kernel
    }

    /// The connection ended: its buffers, for the next hand-over. `None` when they are
    /// not the standard sizes (a larger `txc` is not kept).
    pub fn into_bufs(self) -> Option<RecordBufs> {
        (self.txc.buf.len() == TXC_CAP).then_some(RecordBufs {
            rx: self.rx,
            plain: self.plain,
            txp: self.txp,
            txc: self.txc,
        })
    }

    /// Ciphertext from the socket; the caller checked [`Records::may_read`].
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() || self.dead || self.peer_closed {
            return; // nothing after a failure or close_notify is read
        }
        if self.rx.room() < data.len() {
            self.fail(alert::INTERNAL_ERROR, JobErrorKind::Internal);
            return;
        }
        self.rx.push(data);
    }

    /// Room for one more socket receive of `n` bytes.
    pub fn may_read(&self, n: usize) -> bool {
        !self.dead && !self.peer_closed && !self.socket_eof && self.rx.room() >= n
    }

    /// Plaintext or the end of the stream is waiting for [`Records::read_plain`].
    pub fn pending(&self) -> bool {
        !self.plain.is_empty() || (self.stream_ended() && !self.end_reported)
    }

    /// Jobs of this side are on the engine (either direction).
    pub fn jobs_in_flight(&self) -> bool {
        self.rx_inflight > 0 || self.tx_inflight > 0
    }

    /// Received records are still being opened (or wait for room to be).
    pub fn rx_busy(&self) -> bool {
        self.rx_inflight > 0 || self.rx_rekey || (!self.dead && self.has_complete_record())
    }

    fn stream_ended(&self) -> bool {
        self.peer_closed
            || (self.socket_eof && self.rx_inflight == 0 && !self.has_complete_record())
    }

    fn has_complete_record(&self) -> bool {
        let b = &self.rx.buf[self.rx.mark..self.rx.end];
        b.len() >= HEADER_LEN
            && b.len() >= HEADER_LEN + usize::from(u16::from_be_bytes([b[3], b[4]]))
    }

    /// Decrypted bytes into `out`: `Some(n)` (n > 0), or at the end `Some(0)` once;
    /// `None` when nothing is ready.
    pub fn read_plain(&mut self, out: &mut [u8]) -> Option<usize> {
        if !self.plain.is_empty() {
            let n = self.plain.len().min(out.len());
            out[..n].copy_from_slice(&self.plain.buf[self.plain.start..self.plain.start + n]);
            self.plain.consume(n);
            return Some(n);
        }
        if self.stream_ended() && !self.end_reported {
            self.end_reported = true;
            return Some(0);
        }
        None
    }

    /// Whether the stream ended with `close_notify` (else the socket was cut short).
    pub fn closed_cleanly(&self) -> bool {
        self.peer_closed
    }

    /// Room to take `n` bytes of plaintext to seal.
    pub fn can_take_plain(&self, n: usize) -> bool {
        !self.dead && !self.close_wanted && self.txp.room() >= n
    }

    /// How much plaintext [`Records::write_plain`] can take now.
    pub fn plain_room(&self) -> usize {
        if self.dead || self.close_wanted {
            0
        } else {
            self.txp.room()
        }
    }

    /// Plaintext to seal towards the peer; the caller checked [`Records::can_take_plain`].
    pub fn write_plain(&mut self, data: &[u8]) {
        if self.txp.room() < data.len() {
            self.fail(alert::INTERNAL_ERROR, JobErrorKind::Internal);
            return;
        }
        self.txp.push(data);
    }

    /// Sealed bytes are waiting for the socket.
    pub fn wants_write(&self) -> bool {
        !self.txc.is_empty()
    }

    /// Something towards the peer is not on the socket yet (plaintext, jobs, records).
    pub fn tx_pending(&self) -> bool {
        !self.txc.is_empty()
            || self.tx_inflight > 0
            || (self.alert.is_some() && !self.alert_sent)
            || (!self.dead && (!self.txp.is_empty() || (self.close_wanted && !self.close_sent)))
    }

    /// Copy sealed bytes into `out`.
    pub fn write_tls(&mut self, out: &mut [u8]) -> usize {
        let n = self.txc.len().min(out.len());
        out[..n].copy_from_slice(&self.txc.buf[self.txc.start..self.txc.start + n]);
        self.txc.consume(n);
        n
    }

    /// Queue `close_notify` after the plaintext already taken.
    pub fn close(&mut self) {
        self.close_wanted = true;
    }

    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// The failure to report, once.
    pub fn take_error(&mut self) -> Option<RecordError> {
        self.error.take()
    }

    pub fn failed(&self) -> bool {
        self.dead
    }

    /// Records completed since the last call (for stats).
    pub fn take_count(&mut self) -> u32 {
        std::mem::take(&mut self.uncounted)
    }

    fn fail(&mut self, desc: u8, kind: JobErrorKind) {
        if !self.dead {
            self.dead = true;
            self.alert = Some(desc);
            self.error = Some(RecordError::Sent(desc, kind));
        }
    }

    /// Submit what can be submitted. Returns `true` when the engine's ring was full (the
    /// caller retries after the next reap).
    pub fn pump(&mut self, e: &mut Engine, tag: u64) -> bool {
        if self.rx_rekey {
            self.rx_rekey = false;
            if !self.rekey(e, Direction::Rx) {
                return false;
            }
        }
        if let Some(a) = self.alert {
            if !self.alert_sent {
                // Sealed under the current key, after what was already submitted.
                match self.seal(e, tag, ContentType::Alert, &[2, a]) {
                    Ok(()) => self.alert_sent = true,
                    Err(SubmitError::RingFull) => return true,
                    Err(_) => {
                        // Cannot even send the alert: close without it.
                        self.alert_sent = true;
                    }
                }
            }
            return false;
        }
        // TLS 1.2 has no KeyUpdate (and no such limit on its record counter).
        let due =
            self.fmt.version == TlsVersion::Tls13 && self.tx_since_update >= self.key_update_after;
        if self.answer_key_update || due {
            // KeyUpdate(update_not_requested) under the old key, then switch (RFC 8446
            // §4.6.3): jobs keep the key they were submitted under.
            match self.seal(e, tag, ContentType::Handshake, &[HS_KEY_UPDATE, 0, 0, 1, 0]) {
                Ok(()) => {
                    self.answer_key_update = false;
                    self.tx_since_update = 0;
                    if !self.rekey(e, Direction::Tx) {
                        return false;
                    }
                }
                Err(SubmitError::RingFull) => return true,
                Err(_) => return false,
            }
        }
        while !self.txp.is_empty() {
            let n = self.txp.len().min(MAX_PLAINTEXT);
            let (s, end) = (self.txp.start, self.txp.start + n);
            // Split borrow: the payload comes from `txp`, the reservation from `txc`.
            let need = n + self.fmt.seal_overhead;
            if self.txc.room() < self.txc_reserved + need {
                break;
            }
            let r = e.submit_seal_with(self.session, tag, ContentType::ApplicationData, n, |buf| {
                buf.copy_from_slice(&self.txp.buf[s..end])
            });
            match r {
                Ok(()) => {
                    self.txc_reserved += need;
                    self.tx_inflight += 1;
                    self.tx_since_update += 1;
                    self.txp.consume(n);
                }
                Err(SubmitError::RingFull) => return true,
                Err(_) => break,
            }
        }
        if self.close_wanted && !self.close_sent && self.txp.is_empty() {
            match self.seal(e, tag, ContentType::Alert, &[1, alert::CLOSE_NOTIFY]) {
                Ok(()) => self.close_sent = true,
                Err(SubmitError::RingFull) => return true,
                Err(_) => {}
            }
        }
        self.submit_opens(e, tag)
    }

    fn seal(
        &mut self,
        e: &mut Engine,
        tag: u64,
        ct: ContentType,
        payload: &[u8],
    ) -> Result<(), SubmitError> {
        let need = payload.len() + self.fmt.seal_overhead;
        if self.txc.room() < self.txc_reserved + need {
            return Err(SubmitError::InFlightLimit);
        }
        e.submit_seal(self.session, tag, ct, payload)?;
        self.txc_reserved += need;
        self.tx_inflight += 1;
        Ok(())
    }

    fn rekey(&mut self, e: &mut Engine, dir: Direction) -> bool {
        let keys = self
            .kernel
            .update(dir)
            .ok()
            .and_then(|(seq, s)| tickmesh_offload::rustls_keys::traffic_keys(seq, &s).ok())
            .and_then(|(_, k)| e.update_keys(self.session, dir, &k).ok());
        if keys.is_none() {
            self.fail(alert::INTERNAL_ERROR, JobErrorKind::Internal);
            return false;
        }
        true
    }

    fn submit_opens(&mut self, e: &mut Engine, tag: u64) -> bool {
        while !self.dead && !self.peer_closed && !self.rx_rekey {
            let b = &self.rx.buf[self.rx.mark..self.rx.end];
            if b.len() < HEADER_LEN {
                break;
            }
            let body = usize::from(u16::from_be_bytes([b[3], b[4]]));
            if body > MAX_BODY {
                self.fail(alert::RECORD_OVERFLOW, JobErrorKind::Oversized);
                break;
            }
            if b.len() < HEADER_LEN + body {
                break;
            }
            let reserve = body
                .saturating_sub(self.fmt.open_overhead)
                .min(MAX_PLAINTEXT);
            if self.plain.room() < self.plain_reserved + reserve {
                break;
            }
            match e.submit_open(self.session, tag, &b[..HEADER_LEN + body]) {
                Ok(()) => {
                    self.plain_reserved += reserve;
                    self.rx_inflight += 1;
                    self.rx.mark += HEADER_LEN + body;
                }
                Err(SubmitError::RingFull) => return true,
                Err(_) => break,
            }
        }
        false
    }

    /// A job of this side completed (in submission order per direction).
    pub fn complete(&mut self, c: &Completion<'_>) {
        match c.op {
            Op::Seal => {
                self.tx_inflight = self.tx_inflight.saturating_sub(1);
                match &c.result {
                    Ok(out) => {
                        self.uncounted += 1;
                        // Reserved at submission; the record is never longer.
                        self.txc_reserved = self.txc_reserved.saturating_sub(out.data.len());
                        self.txc.push(out.data);
                    }
                    Err(JobError::SequenceExhausted) => self.exhausted(),
                    Err(e) => self.fail(alert::INTERNAL_ERROR, JobErrorKind::Job(*e)),
                }
                if self.tx_inflight == 0 {
                    self.txc_reserved = 0;
                }
            }
            Op::Open => {
                self.rx_inflight = self.rx_inflight.saturating_sub(1);
                if self.rx_discard > 0 {
                    self.rx_discard -= 1;
                    return;
                }
                let b = &self.rx.buf[self.rx.start..self.rx.end];
                let len = if b.len() >= HEADER_LEN {
                    HEADER_LEN + usize::from(u16::from_be_bytes([b[3], b[4]]))
                } else {
                    b.len()
                };
                let reserve = (len - HEADER_LEN.min(len))
                    .saturating_sub(self.fmt.open_overhead)
                    .min(MAX_PLAINTEXT);
                self.plain_reserved = self.plain_reserved.saturating_sub(reserve);
                self.rx.consume(len);
                if self.rx_inflight == 0 {
                    self.plain_reserved = 0;
                }
                if self.dead || self.peer_closed {
                    return; // nothing after a failure or close_notify counts
                }
                let out = match &c.result {
                    Ok(o) => o,
                    Err(e) => {
                        let desc = match e {
                            JobError::BadRecordMac => alert::BAD_RECORD_MAC,
                            JobError::RecordOverflow => alert::RECORD_OVERFLOW,
                            JobError::BadContentType => alert::UNEXPECTED_MESSAGE,
                            JobError::SequenceExhausted => return self.exhausted(),
                            JobError::SessionGone | JobError::Crypto => alert::INTERNAL_ERROR,
                            _ => alert::DECODE_ERROR,
                        };
                        return self.fail(desc, JobErrorKind::Job(*e));
                    }
                };
                self.uncounted += 1;
                match out.content_type {
                    ContentType::ApplicationData => self.plain.push(out.data),
                    ContentType::Alert => self.on_alert(out.data),
                    ContentType::Handshake => self.on_handshake(out.data),
                    _ => self.fail(alert::UNEXPECTED_MESSAGE, JobErrorKind::BadMessage),
                }
            }
        }
    }

    fn exhausted(&mut self) {
        if !self.dead {
            self.dead = true;
            self.error = Some(RecordError::Exhausted);
            self.alert = None;
            self.alert_sent = true;
        }
    }

    fn on_alert(&mut self, a: &[u8]) {
        match a {
            [_, alert::CLOSE_NOTIFY] => self.peer_closed = true,
            // TLS 1.2 warnings and user_canceled (always followed by close_notify).
            [1, _] | [_, alert::USER_CANCELED] if self.fmt.version == TlsVersion::Tls12 => {}
            [_, alert::USER_CANCELED] => {}
            [_, desc] => {
                if !self.dead {
                    self.dead = true;
                    self.error = Some(RecordError::Received(*desc));
                    // No alert answers a fatal alert.
                    self.alert = Some(*desc);
                    self.alert_sent = true;
                }
            }
            _ => self.fail(alert::DECODE_ERROR, JobErrorKind::BadMessage),
        }
    }

    fn on_handshake(&mut self, data: &[u8]) {
        let mut owned = std::mem::take(&mut self.hs);
        let mut msg: &[u8] = if owned.is_empty() {
            data
        } else {
            owned.extend_from_slice(data);
            &owned
        };
        while msg.len() >= 4 {
            let len = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if len > MAX_PLAINTEXT * 4 {
                return self.fail(alert::DECODE_ERROR, JobErrorKind::BadMessage);
            }
            if msg.len() < 4 + len {
                break;
            }
            let (typ, body) = (msg[0], &msg[4..4 + len]);
            msg = &msg[4 + len..];
            match (typ, self.fmt.version) {
                (HS_KEY_UPDATE, TlsVersion::Tls13) => {
                    match body {
                        [0] => {}
                        // The peer asks for ours; one answer covers any number of requests
                        // since the last one we sent (§4.6.3).
                        [1] => self.answer_key_update = true,
                        _ => return self.fail(alert::DECODE_ERROR, JobErrorKind::BadMessage),
                    }
                    // Records behind this one were opened with the old key: their jobs'
                    // completions are ignored and the records resubmitted after the update.
                    self.rx_discard = self.rx_inflight;
                    self.rx.mark = self.rx.start;
                    self.plain_reserved = 0;
                    self.rx_rekey = true;
                    if !msg.is_empty() {
                        // Must end the record (§5.1: KeyUpdate aligns with a record boundary).
                        return self.fail(alert::UNEXPECTED_MESSAGE, JobErrorKind::BadMessage);
                    }
                }
                (HS_NEW_SESSION_TICKET, TlsVersion::Tls13) => match &mut self.kernel {
                    Kernel::Client(k) => {
                        // A ticket rustls cannot use is not worth ending the connection.
                        let _ = k.handle_new_session_ticket(body);
                    }
                    Kernel::Server(_) => {
                        return self.fail(alert::UNEXPECTED_MESSAGE, JobErrorKind::BadMessage)
                    }
                },
                // TLS 1.2 HelloRequest: renegotiation is not supported; ignoring it is
                // allowed (RFC 5246 §7.4.1.1).
                (HS_HELLO_REQUEST, TlsVersion::Tls12)
                    if matches!(self.kernel, Kernel::Client(_)) => {}
                _ => return self.fail(alert::UNEXPECTED_MESSAGE, JobErrorKind::BadMessage),
            }
        }
        // Post-handshake messages are rare (KeyUpdate, tickets): allocating here, off the
        // record path, keeps every other record allocation-free.
        let rest = msg.to_vec();
        owned.clear();
        owned.extend_from_slice(&rest);
        self.hs = owned;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lin_buffer_compacts_and_keeps_its_mark() {
        let mut l = Lin::new(8);
        l.push(b"abcdef");
        l.mark = 4;
        l.consume(3);
        assert_eq!(l.room(), 5);
        l.push(b"ghijk");
        assert_eq!(&l.buf[l.start..l.end], b"defghijk");
        assert_eq!(&l.buf[l.mark..l.mark + 2], b"ef");
        l.consume(8);
        assert!(l.is_empty());
        assert_eq!((l.start, l.mark, l.end), (0, 0, 0));
    }

    #[test]
    fn formats_reserve_enough() {
        let f = Format::new(TlsVersion::Tls13, CipherSuite::Aes128Gcm);
        assert_eq!((f.seal_overhead, f.open_overhead), (22, 17));
        let f = Format::new(TlsVersion::Tls12, CipherSuite::Aes256Gcm);
        assert_eq!((f.seal_overhead, f.open_overhead), (29, 24));
        let f = Format::new(TlsVersion::Tls12, CipherSuite::Chacha20Poly1305);
        assert_eq!((f.seal_overhead, f.open_overhead), (21, 16));
    }
}
