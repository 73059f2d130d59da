//! The TLS layer of one proxied TCP connection: per side that needs one (server on the
//! downstream side, client on the upstream side) a rustls handshake, then a record layer
//! on the worker's offload engine ([`super::records`]).
//!
//! rustls (unbuffered API) does the handshake only. It is fed one record at a time, so
//! it stops at the last handshake record and never decrypts application data; once it
//! reports the handshake done, its traffic secrets are extracted
//! (`dangerous_into_kernel_connection`, the kTLS hand-over), a crypto session is created
//! in the worker's [`Crypto`] engine, and from then on every record of that side is a
//! seal or open job on the engine's rings. With the `ktls` backend (L4 relay only: it
//! owns the sockets) a side stops at `ready` instead and the relay calls
//! [`Tls::hand_over_kernel`]: the keys go to the socket ([`super::kernel`]) and the side
//! becomes plaintext to the relay (`has` is false for it), or it falls back to the engine.
//!
//! Owns the sessions and their per-side flags; the relay (`proxy::l4::tcp`) owns the
//! sockets and the queues. Never blocks and never does I/O itself. Memory stays bounded:
//! the handshake buffers are dropped at the hand-over; the record layer's buffers are
//! fixed (see `records`), and the relay reads a side only when they have room.

use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{client::UnbufferedClientConnection, server::UnbufferedServerConnection};
use tickmesh_offload::{BackendChoice, Completion, Engine, EngineConfig, SessionParams};

use super::kernel::{Control, Fallback, Install, KernelSide};
use super::records::{Kernel, RecordBufs, RecordError, Records};
use super::{ClientTls, Mode, ServerTls};
use crate::config::tls::OffloadBackend;
use crate::proxy::l4::Side;
use crate::telemetry::{ListenerCounter, UpstreamCounter};

/// The first byte of a TLS handshake record (RFC 8446 §5.1, `ContentType.handshake`).
const HANDSHAKE: u8 = 22;
/// Jobs one TLS side may have in flight on the engine.
const IN_FLIGHT_LIMIT: u32 = 16;

/// What the first byte from a client says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Tls,
    /// Not TLS, and the listener is `PERMISSIVE`: relay it as plaintext.
    Plain,
    /// Not TLS on a `STRICT` listener: rustls answers it with an alert.
    Rejected,
}

/// Plaintext read out of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    Data(usize),
    /// Nothing ready.
    Empty,
    /// The peer sent `close_notify` and everything before it was read.
    Closed,
    /// The peer's socket ended without `close_notify` (possible truncation attack).
    Truncated,
}

/// Why a TLS side failed.
#[derive(Debug)]
pub enum FeedError {
    /// The handshake failed (protocol, verification); rustls queued the alert.
    Tls(rustls::Error),
    /// After the handshake: a bad record or message (our alert queued), the peer's
    /// fatal alert, or exhausted sequence numbers.
    Record(RecordError),
    /// More bytes than the layer can hold: the relay read when it should not have.
    Overrun,
}

/// The worker's offload engine and the connections waiting for room on its ring.
pub struct Crypto {
    pub engine: Engine,
    /// Connections (slot, generation) whose submission found the ring full.
    pub waiters: Vec<(u32, u16)>,
    /// Record buffers of ended connections, for the next hand-over (at most
    /// [`SPARE_BUFS`]): a connection's full handshake then allocates no record buffers.
    spare: Vec<RecordBufs>,
}

/// Record buffer sets a worker keeps for reuse (each [`RecordBufs::SIZE`], ~84 KiB).
const SPARE_BUFS: usize = 32;

impl Crypto {
    /// Build the worker's engine for the configured backend; one the host cannot offer
    /// falls back to software (logged with the reason by the engine's selection).
    pub fn new(choice: OffloadBackend) -> Crypto {
        Crypto::with_driver(choice, None)
    }

    /// Like [`Crypto::new`], naming the crypto device driver for `cryptodev`
    /// (`offload.cryptodev_driver`; ignored in builds without the `dpdk` feature).
    pub fn with_driver(
        choice: OffloadBackend,
        driver: Option<crate::config::tls::CryptodevDriver>,
    ) -> Crypto {
        // Process-wide: every worker builds its engine from the same config.
        #[cfg(feature = "dpdk")]
        {
            use crate::config::tls::CryptodevDriver as C;
            use tickmesh_offload::backend::cryptodev::{set_driver, Driver};
            set_driver(driver.map(|d| match d {
                C::AesniGcm => Driver::AesniGcm,
                C::Openssl => Driver::Openssl,
            }));
        }
        #[cfg(not(feature = "dpdk"))]
        let _ = driver;
        let backend = match choice {
            OffloadBackend::Auto => BackendChoice::Auto,
            OffloadBackend::Software => BackendChoice::Software,
            OffloadBackend::SoftwareThreaded => BackendChoice::SoftwareThreaded { cpu: None },
            OffloadBackend::Ktls => BackendChoice::Ktls,
            OffloadBackend::Cryptodev => BackendChoice::Cryptodev,
        };
        let cfg = EngineConfig {
            backend,
            slots: 256,
            batch: 32,
            default_in_flight_limit: IN_FLIGHT_LIMIT,
            max_sessions: 1 << 17,
        };
        let engine = match Engine::new(cfg) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(
                    backend = ?choice,
                    error = %err,
                    "offload backend not available in this binary or on this host; using software"
                );
                // Software needs nothing from the host: only a sizing error could fail it,
                // and the sizing is the constant above.
                Engine::new(EngineConfig {
                    backend: BackendChoice::Software,
                    ..cfg
                })
                .expect("software offload engine with constant sizing")
            }
        };
        Crypto {
            engine,
            waiters: Vec::with_capacity(1024),
            spare: Vec::with_capacity(SPARE_BUFS),
        }
    }
}

impl Sniff {
    /// The listener counter a sniff verdict lands on (`Tls`: none).
    pub fn counter(self) -> Option<ListenerCounter> {
        match self {
            Sniff::Tls => None,
            Sniff::Plain => Some(ListenerCounter::TlsPlaintextAccepted),
            Sniff::Rejected => Some(ListenerCounter::TlsPlaintextRejected),
        }
    }
}

impl FeedError {
    /// The listener counter a failure of the client's side lands on (`handshaking`: the
    /// side had not finished its handshake). The same for every proxy.
    pub fn down_counter(&self, handshaking: bool) -> ListenerCounter {
        use ListenerCounter as L;
        match self {
            FeedError::Tls(rustls::Error::InvalidCertificate(_))
            | FeedError::Tls(rustls::Error::NoCertificatesPresented) => L::TlsCertRejected,
            FeedError::Tls(rustls::Error::AlertReceived(_))
            | FeedError::Record(RecordError::Received(_)) => L::TlsAlertsReceived,
            FeedError::Record(_) => L::TlsRecordErrors,
            _ if handshaking => L::TlsHandshakeErrors,
            _ => L::TlsRecordErrors,
        }
    }
}

/// What the record layers did since the last look: records completed per side (for
/// `tls_records_offloaded`) and the first failure found.
pub struct Activity {
    pub records: [u32; 2],
    pub error: Option<(Side, FeedError)>,
}

/// A completion's tag: which connection slot (and generation) and side it belongs to.
#[inline]
pub fn tag(slot: u32, gen: u16, side: Side) -> u64 {
    u64::from(slot) | u64::from(gen) << 32 | (side.idx() as u64) << 48
}

#[inline]
pub fn untag(t: u64) -> (u32, u16, Side) {
    (
        t as u32,
        (t >> 32) as u16,
        Side::from_idx((t >> 48) as usize & 1),
    )
}

enum HsConn {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// A side during its handshake.
struct Handshake {
    conn: HsConn,
    /// Received bytes; `[..fed]` were given to rustls (it may still hold some).
    inbuf: Vec<u8>,
    fed: usize,
    /// Encoded handshake records waiting for the socket: `out[out_off..out_end]`. The
    /// vector keeps its length (zeroed once, when it grows): rustls encodes in place
    /// after `out_end`, so a handshake message costs no clearing of fresh room.
    out: Vec<u8>,
    out_off: usize,
    out_end: usize,
    dead: bool,
    eof: bool,
    end_reported: bool,
    /// Done, waiting for [`Tls::hand_over_kernel`] (kTLS sides only).
    ready: bool,
}

#[derive(Default)]
enum State {
    #[default]
    None,
    Hs(Box<Handshake>),
    Rec(Box<Records>),
    /// The kernel protects this side's records: to the relay it is a plaintext side.
    Kernel(Box<KernelSide>),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::None => "None",
            State::Hs(_) => "Handshake",
            State::Rec(_) => "Records",
            State::Kernel(_) => "Kernel",
        })
    }
}

/// What a round of handshake processing ended in.
enum Progress {
    Again,
    Blocked,
    Done,
    Closed,
}

/// The end of the first complete record in `b`, or `b.len()` when there is none (rustls
/// then waits for more, or rejects a malformed header).
fn first_record_end(b: &[u8]) -> usize {
    if b.len() >= 5 {
        let end = 5 + usize::from(u16::from_be_bytes([b[3], b[4]]));
        if end <= b.len() {
            return end;
        }
    }
    b.len()
}

fn handle<Data>(st: ConnectionState<'_, '_, Data>, out: &mut Vec<u8>, end: &mut usize) -> Progress {
    match st {
        ConnectionState::EncodeTlsData(mut e) => {
            let at = *end;
            if out.len() - at < 1024 {
                // A flight's messages are small; one 4 KiB step fits most handshakes.
                out.resize(at + 4096, 0);
            }
            let n = match e.encode(&mut out[at..]) {
                Ok(n) => n,
                Err(EncodeError::InsufficientSize(s)) => {
                    out.resize(at + s.required_size, 0);
                    e.encode(&mut out[at..]).unwrap_or(0)
                }
                Err(_) => 0,
            };
            *end = at + n;
            Progress::Again
        }
        ConnectionState::TransmitTlsData(t) => {
            // The bytes are queued in order in `out`; the relay sends them.
            t.done();
            Progress::Again
        }
        ConnectionState::BlockedHandshake => Progress::Blocked,
        ConnectionState::WriteTraffic(_) => Progress::Done,
        // Fed one record at a time, rustls never gets application data before the
        // handshake ends; early data is not enabled. Anything else ends the handshake.
        _ => Progress::Closed,
    }
}

fn status<Data>(
    s: UnbufferedStatus<'_, '_, Data>,
    out: &mut Vec<u8>,
    end: &mut usize,
) -> (usize, Result<Progress, rustls::Error>) {
    (s.discard, s.state.map(|st| handle(st, out, end)))
}

impl Handshake {
    fn new(conn: HsConn) -> Box<Handshake> {
        Box::new(Handshake {
            conn,
            // A ClientHello or a server's first flight fits: no growth steps.
            inbuf: Vec::with_capacity(2048),
            fed: 0,
            out: Vec::new(),
            out_off: 0,
            out_end: 0,
            dead: false,
            eof: false,
            end_reported: false,
            ready: false,
        })
    }

    /// Run rustls over what was received. `Ok(true)`: the handshake is done.
    fn advance(&mut self) -> Result<bool, rustls::Error> {
        // Each round either consumes a record or ends; the bound only guards against a
        // rustls that would neither progress nor block.
        for _ in 0..1024 {
            let handshaking = match &self.conn {
                HsConn::Server(c) => c.is_handshaking(),
                HsConn::Client(c) => c.is_handshaking(),
            };
            // Once the handshake is over, no further record goes to rustls: what it
            // still has to send (tickets) is drained, the rest is the engine's.
            let end = if handshaking {
                self.fed + first_record_end(&self.inbuf[self.fed..])
            } else {
                self.fed
            };
            let (discard, r) = match &mut self.conn {
                HsConn::Server(c) => status(
                    c.process_tls_records(&mut self.inbuf[..end]),
                    &mut self.out,
                    &mut self.out_end,
                ),
                HsConn::Client(c) => status(
                    c.process_tls_records(&mut self.inbuf[..end]),
                    &mut self.out,
                    &mut self.out_end,
                ),
            };
            self.fed = end;
            self.inbuf.drain(..discard);
            self.fed -= discard.min(self.fed);
            match r {
                Err(e) => {
                    self.dead = true;
                    self.flush_alert();
                    return Err(e);
                }
                Ok(Progress::Again) => {}
                Ok(Progress::Blocked) if handshaking && self.fed < self.inbuf.len() => {}
                Ok(Progress::Blocked) => return Ok(false),
                Ok(Progress::Done) => {
                    let handshaking = match &self.conn {
                        HsConn::Server(c) => c.is_handshaking(),
                        HsConn::Client(c) => c.is_handshaking(),
                    };
                    // A TLS 1.3 server may send (0.5-RTT) before the client's Finished:
                    // that is not the end of the handshake.
                    if !handshaking {
                        return Ok(true);
                    }
                    if self.fed >= self.inbuf.len() {
                        return Ok(false);
                    }
                }
                Ok(Progress::Closed) => {
                    self.dead = true;
                    return Err(rustls::Error::General(
                        "peer closed during the handshake".into(),
                    ));
                }
            }
        }
        self.dead = true;
        Err(rustls::Error::General("handshake made no progress".into()))
    }

    /// After a failure rustls holds the alert it queued: encode it for the socket. One
    /// call: earlier records were taken before the failure, and a second call would
    /// parse the bad input again.
    fn flush_alert(&mut self) {
        // The same buffer as before: rustls may still refer to positions in it.
        let fed = self.fed.min(self.inbuf.len());
        let buf = &mut self.inbuf[..fed];
        let _ = match &mut self.conn {
            HsConn::Server(c) => {
                status(c.process_tls_records(buf), &mut self.out, &mut self.out_end)
            }
            HsConn::Client(c) => {
                status(c.process_tls_records(buf), &mut self.out, &mut self.out_end)
            }
        };
    }

    fn pending_out(&self) -> &[u8] {
        &self.out[self.out_off..self.out_end]
    }
}

/// One side's session parked with its socket (an idle pooled upstream connection):
/// past its handshake, nothing in flight on the engine, nothing buffered either way.
#[derive(Debug)]
pub struct Parked(State);

impl Parked {
    /// The kernel holds this session's keys (a kTLS side): its socket carries plaintext.
    pub fn is_kernel(&self) -> bool {
        matches!(self.0, State::Kernel(_))
    }

    /// The socket closes while parked: destroy the engine session (a kernel side's
    /// keys go with its socket).
    pub fn release(self, cr: Option<&mut Crypto>) {
        if let (State::Rec(r), Some(cr)) = (&self.0, cr) {
            let _ = cr.engine.destroy_session(r.session());
        }
    }
}

impl Parked {
    /// Bytes that arrived on the parked socket (its peer speaks while the connection
    /// idles: a late NewSessionTicket, a KeyUpdate — or something that ends it): their
    /// records go to the engine under `tag` ([`parked_tag`] of the socket) and are judged
    /// by [`Parked::settle`] once opened. `Err`: the session cannot take them (a kernel
    /// side, no room, the ring full): the connection is done for.
    pub fn absorb(&mut self, data: &[u8], cr: &mut Crypto, tag: u64) -> Result<(), NotQuiet> {
        let State::Rec(r) = &mut self.0 else {
            return Err(NotQuiet);
        };
        if r.failed() || r.peer_closed || !r.may_read(data.len()) {
            return Err(NotQuiet);
        }
        r.feed(data);
        if r.pump(&mut cr.engine, tag) {
            // Ring full: not worth a waiter list of its own for an idle connection.
            return Err(NotQuiet);
        }
        Ok(())
    }

    /// A job submitted by [`Parked::absorb`] or [`Parked::settle`] completed. `false`:
    /// not this session's (a closed socket's late completion under a reused number).
    pub fn complete(&mut self, c: &Completion<'_>) -> bool {
        match &mut self.0 {
            State::Rec(r) if r.session() == c.session => {
                r.complete(c);
                true
            }
            _ => false,
        }
    }

    /// Jobs of this session are on the engine: it must not be handed out (their
    /// completions come back to the pool, not to a connection).
    pub fn busy(&self) -> bool {
        matches!(&self.0, State::Rec(r) if r.jobs_in_flight())
    }

    /// After completions: submit what follows (records behind a KeyUpdate under the new
    /// key, our answer to a KeyUpdate that asked for one) and judge the session.
    /// Post-handshake messages (tickets, KeyUpdate) keep it; plaintext (a response
    /// nobody asked for), `close_notify`, an alert or a bad record end it.
    pub fn settle(&mut self, cr: &mut Crypto, tag: u64) -> Settled {
        let State::Rec(r) = &mut self.0 else {
            return Settled::Quiet;
        };
        if !r.failed() && r.pump(&mut cr.engine, tag) {
            return Settled::Dead;
        }
        if r.failed() || r.peer_closed || r.socket_eof || r.pending() {
            Settled::Dead
        } else if r.jobs_in_flight() || r.rx_busy() {
            Settled::Busy
        } else {
            // What the session owes its peer (a KeyUpdate answer) waits in its record
            // buffer and leaves first when the next connection sends.
            Settled::Quiet
        }
    }
}

/// What a parked session made of bytes its peer sent while it idled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Records are still on the engine.
    Busy,
    /// Only post-handshake messages: the connection may be reused.
    Quiet,
    /// The connection cannot be reused.
    Dead,
}

/// The tag of a parked session's jobs: [`PARKED_TAG`] plus the socket's descriptor (a
/// parked connection has no connection slot; the worker finds it in its pool).
#[inline]
pub fn parked_tag(fd: RawFd) -> u64 {
    PARKED_TAG | u64::from(fd as u32)
}

/// The bit that marks a parked session's tag (see [`parked_tag`]); [`tag`] never sets it.
pub const PARKED_TAG: u64 = 1 << 63;

/// A session with records in flight or buffered: it cannot be parked.
#[derive(Debug, Clone, Copy)]
pub struct NotQuiet;

/// What a kTLS hand-over attempt ([`Tls::hand_over_kernel`]) did with a side whose
/// handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// The kernel protects the side's records now.
    Kernel,
    /// The engine's backend is not `ktls`: the side is on the engine, nothing tried.
    Engine,
    /// The hand-over was tried and the side stays on the engine, for this reason.
    Fallback(Fallback),
}

impl HandOver {
    /// The counters an attempt lands on (listener's, cluster's): `None` when nothing
    /// was tried.
    pub fn counters(self) -> Option<(ListenerCounter, UpstreamCounter)> {
        match self {
            HandOver::Kernel => Some((
                ListenerCounter::TlsKtlsHandovers,
                UpstreamCounter::TlsKtlsHandovers,
            )),
            HandOver::Fallback(_) => Some((
                ListenerCounter::TlsKtlsFallbacks,
                UpstreamCounter::TlsKtlsFallbacks,
            )),
            HandOver::Engine => None,
        }
    }
}

/// What a failed receive on a kernel side means ([`Tls::kernel_recv_failed`]).
#[derive(Debug)]
pub enum KernelRecv {
    /// A control record was read and acted on.
    Control(Control),
    /// A bad record: its alert was sent; the side failed.
    Record(FeedError),
    /// Not about records (a reset): handled as on a plaintext socket.
    Socket,
}

/// Whether a kernel side may be parked with its idle socket: nothing of its peer's
/// waits to be read, neither end has closed, no KeyUpdate is owed.
fn kernel_quiet(k: &KernelSide) -> bool {
    !k.pending() && !k.peer_closed && !k.close_sent && !k.key_update_owed
}

#[derive(Debug, Default)]
pub struct Tls {
    sides: [State; 2],
    /// Termination policy of the listener (downstream side).
    pub server: Option<Arc<ServerTls>>,
    /// Waiting for the client's first byte to choose TLS or plaintext.
    sniffing: bool,
    /// The client's SPIFFE ID, read from its certificate at the end of the handshake.
    identity: Option<Box<str>>,
    /// SHA-256 of the client's certificate (DER), lowercase hex (XFCC's `Hash=`).
    cert_hash: Option<Box<str>>,
    /// A fatal error on this side: its alert is flushed, then the connection closes.
    pub failed: Option<Side>,
    /// Sides that finish their handshake stop at `ready` for [`Tls::hand_over_kernel`]
    /// (the relay owns the socket and can hand keys to the kernel).
    kernel_wanted: bool,
    /// Keep the client's certificate chain after the handshake (for XFCC details).
    keep_chain: bool,
    /// The client's verified chain, leaf first, when `keep_chain` (taken by the caller).
    peer_chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl Tls {
    /// Terminate TLS from the client (the session starts once the first byte is seen).
    pub fn server(s: Arc<ServerTls>) -> Box<Tls> {
        Box::new(Tls {
            server: Some(s),
            sniffing: true,
            ..Tls::default()
        })
    }

    pub fn empty() -> Box<Tls> {
        Box::default()
    }

    /// Start originating TLS on the upstream side (the ClientHello is then waiting).
    pub fn start_client(&mut self, c: &ClientTls) -> Result<(), rustls::Error> {
        let conn = UnbufferedClientConnection::new(c.config.clone(), c.name.clone())?;
        let mut hs = Handshake::new(HsConn::Client(conn));
        hs.advance()?;
        self.sides[Side::Up.idx()] = State::Hs(hs);
        Ok(())
    }

    pub fn sniffing(&self) -> bool {
        self.sniffing
    }

    /// Decide on the client's first byte.
    pub fn sniff(&mut self, first: u8) -> Sniff {
        self.sniffing = false;
        let Some(s) = &self.server else {
            return Sniff::Plain;
        };
        let verdict = match (first == HANDSHAKE, s.mode) {
            (true, _) => Sniff::Tls,
            (false, Mode::Permissive) => Sniff::Plain,
            (false, Mode::Strict) => Sniff::Rejected,
        };
        if verdict != Sniff::Plain {
            match UnbufferedServerConnection::new(s.config.clone()) {
                Ok(c) => {
                    self.sides[Side::Down.idx()] = State::Hs(Handshake::new(HsConn::Server(c)))
                }
                // Only a config rustls itself rejects; the caller closes.
                Err(_) => return Sniff::Rejected,
            }
        }
        verdict
    }

    /// `side` has a TLS layer the relay must pass bytes through (a kernel side does not:
    /// its socket carries plaintext).
    #[inline]
    pub fn has(&self, side: Side) -> bool {
        !matches!(self.sides[side.idx()], State::None | State::Kernel(_))
    }

    /// The kernel protects `side`'s records.
    #[inline]
    pub fn is_kernel(&self, side: Side) -> bool {
        matches!(self.sides[side.idx()], State::Kernel(_))
    }

    /// Keep the client's certificate chain past the handshake ([`Tls::take_peer_chain`]).
    pub fn keep_peer_chain(&mut self, yes: bool) {
        self.keep_chain = yes;
    }

    /// The client's verified certificate chain, leaf first (once, when kept).
    pub fn take_peer_chain(&mut self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.peer_chain.take()
    }

    /// Hand keys to the kernel after handshakes (the engine's backend is `ktls`).
    pub fn want_kernel(&mut self, yes: bool) {
        self.kernel_wanted = yes;
    }

    /// `side`'s handshake is done and waits for [`Tls::hand_over_kernel`].
    pub fn kernel_ready(&self, side: Side) -> bool {
        matches!(&self.sides[side.idx()], State::Hs(h) if h.ready)
    }

    fn kernel_side(&mut self, side: Side) -> Option<&mut KernelSide> {
        match &mut self.sides[side.idx()] {
            State::Kernel(k) => Some(k),
            _ => None,
        }
    }

    /// A receive on kernel side `side` failed with `EIO` (a non-data record is next):
    /// read and act on it. `tx_idle`: nothing queued or in flight towards `side`.
    fn kernel_control(&mut self, side: Side, fd: RawFd, tx_idle: bool) -> Control {
        match self.kernel_side(side) {
            Some(k) => k.control(fd, tx_idle),
            None => Control::Empty,
        }
    }

    /// Send a KeyUpdate `side`'s peer asked for and we could not send at once (call when
    /// nothing is queued or in flight towards `side`).
    pub fn kernel_settle(&mut self, side: Side, fd: RawFd) -> Control {
        match self.kernel_side(side) {
            Some(k) if k.key_update_owed => k.settle(fd),
            _ => Control::Again,
        }
    }

    /// `side` is a kernel side that owes its peer a KeyUpdate.
    pub fn kernel_owes(&self, side: Side) -> bool {
        matches!(&self.sides[side.idx()], State::Kernel(k) if k.key_update_owed)
    }

    /// Send `close_notify` on kernel side `side` (once; nothing for other sides).
    pub fn kernel_close(&mut self, side: Side, fd: RawFd) {
        if let Some(k) = self.kernel_side(side) {
            k.close(fd);
        }
    }

    /// The peer of kernel side `side` sent `close_notify` (its EOF is clean).
    pub fn kernel_peer_closed(&self, side: Side) -> bool {
        matches!(&self.sides[side.idx()], State::Kernel(k) if k.peer_closed)
    }

    /// A receive on kernel side `side` failed with `-errno`: the record error it stands
    /// for (its alert sent), or `None` when it is a socket error.
    fn kernel_record_error(&mut self, side: Side, fd: RawFd, errno: i32) -> Option<FeedError> {
        self.kernel_side(side)?
            .record_error(fd, errno)
            .map(FeedError::Record)
    }

    /// The side's handshake is not finished (or not started: still sniffing).
    #[inline]
    pub fn handshaking(&self, side: Side) -> bool {
        (side == Side::Down && self.sniffing) || matches!(self.sides[side.idx()], State::Hs(_))
    }

    /// Bytes for `side`'s socket are ready now.
    #[inline]
    pub fn wants_write(&self, side: Side) -> bool {
        match &self.sides[side.idx()] {
            State::None => false,
            State::Hs(h) => !h.pending_out().is_empty(),
            State::Rec(r) => r.wants_write(),
            State::Kernel(_) => false,
        }
    }

    /// Something for `side`'s socket is still on its way (ready, or being sealed).
    #[inline]
    pub fn tx_pending(&self, side: Side) -> bool {
        match &self.sides[side.idx()] {
            State::Rec(r) => r.tx_pending(),
            _ => self.wants_write(side),
        }
    }

    /// Decrypted bytes, or the end of the stream, wait to be read from `side`.
    #[inline]
    pub fn pending(&self, side: Side) -> bool {
        match &self.sides[side.idx()] {
            State::None => false,
            State::Hs(h) => h.eof && !h.end_reported,
            State::Rec(r) => r.pending(),
            State::Kernel(k) => k.pending(),
        }
    }

    /// `side`'s received records are still being opened.
    #[inline]
    pub fn rx_busy(&self, side: Side) -> bool {
        match &self.sides[side.idx()] {
            State::Rec(r) => r.rx_busy(),
            _ => false,
        }
    }

    #[inline]
    pub fn peer_closed(&self, side: Side) -> bool {
        match &self.sides[side.idx()] {
            State::None => false,
            State::Hs(h) => h.eof || h.dead,
            State::Rec(r) => r.peer_closed || r.socket_eof,
            // The relay sees the socket's EOF itself.
            State::Kernel(_) => false,
        }
    }

    /// `side`'s socket may take another receive of up to `n` bytes.
    pub fn may_read(&self, side: Side, n: usize) -> bool {
        match &self.sides[side.idx()] {
            State::Rec(r) => r.may_read(n),
            State::Hs(h) => !h.dead && !h.ready,
            // A plaintext side: its bytes go to the other side's sealer.
            State::None | State::Kernel(_) => self.can_take_plain(side.other(), n),
        }
    }

    /// Whether `side`'s socket should be read now, by the one policy every HTTP TLS glue
    /// uses (client and upstream sides of a connection, shadows): during the handshake
    /// when it can take bytes; after it when the reader `wants` bytes, nothing decrypted
    /// waits, no record is still being opened, and the record layer has room for `n`.
    pub fn should_read(&self, side: Side, wants: bool, n: usize) -> bool {
        if self.handshaking(side) {
            self.may_read(side, n)
        } else {
            wants && !self.pending(side) && !self.rx_busy(side) && self.may_read(side, n)
        }
    }

    /// `n` bytes of plaintext could be handed to `side` for sealing now.
    pub fn can_take_plain(&self, side: Side, n: usize) -> bool {
        match &self.sides[side.idx()] {
            State::Rec(r) => r.can_take_plain(n),
            State::Hs(_) => false,
            State::None => true,
            State::Kernel(k) => k.can_take_plain(),
        }
    }

    /// Bytes received from `side`'s socket. `Ok(true)` when this completed the handshake.
    pub fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        cr: &mut Crypto,
        tag: u64,
    ) -> Result<bool, FeedError> {
        let i = side.idx();
        match &mut self.sides[i] {
            State::None | State::Kernel(_) => Ok(false),
            State::Rec(r) => {
                if !r.failed() && !r.peer_closed && !r.may_read(data.len()) {
                    return Err(FeedError::Overrun);
                }
                r.feed(data);
                if r.pump(&mut cr.engine, tag) {
                    push_waiter(cr, tag);
                }
                Ok(false)
            }
            State::Hs(h) => {
                if h.dead || h.ready {
                    return Ok(false);
                }
                if h.inbuf.len() + data.len() > 256 * 1024 {
                    // No handshake flight is this large; refuse to buffer more.
                    return Err(FeedError::Overrun);
                }
                h.inbuf.extend_from_slice(data);
                if !h.advance().map_err(FeedError::Tls)? {
                    return Ok(false);
                }
                if self.kernel_wanted {
                    h.ready = true;
                    return Ok(true);
                }
                self.hand_over(side, cr, tag, None).map(|_| true)
            }
        }
    }

    /// The handshake of `side` ended and it is [`Tls::kernel_ready`]: hand its keys to
    /// the kernel on socket `fd` when the engine's backend is `ktls` and the side allows it
    /// (`idle`: no ciphertext queued or in flight towards the socket; no receive may be
    /// armed on it); otherwise to the engine. The one hand-over of every proxy (L4 relay,
    /// HTTP client and upstream sides). `Ok(None)`: the side was not waiting for one.
    pub fn hand_over_kernel(
        &mut self,
        side: Side,
        fd: RawFd,
        idle: bool,
        cr: &mut Crypto,
        tag: u64,
    ) -> Result<Option<HandOver>, FeedError> {
        if !self.kernel_ready(side) {
            return Ok(None);
        }
        let wanted = cr.engine.ktls_enabled();
        let kernel = wanted.then_some((fd, idle));
        let fallback = self.hand_over(side, cr, tag, kernel)?;
        Ok(Some(match fallback {
            Some(why) => HandOver::Fallback(why),
            None if self.is_kernel(side) => HandOver::Kernel,
            None => HandOver::Engine,
        }))
    }

    /// A receive on kernel side `side` failed with `errno` (`tx_idle`: nothing queued or
    /// in flight towards it). `EIO` is a control record, read and acted on here; `EBADMSG`,
    /// `EMSGSIZE`, `EINVAL` a bad record (alert sent); anything else a socket error.
    /// Shared by every proxy with kernel sides.
    pub fn kernel_recv_failed(
        &mut self,
        side: Side,
        fd: RawFd,
        errno: i32,
        tx_idle: bool,
    ) -> KernelRecv {
        if errno == libc::EIO {
            return KernelRecv::Control(self.kernel_control(side, fd, tx_idle));
        }
        match self.kernel_record_error(side, fd, errno) {
            Some(e) => KernelRecv::Record(e),
            None => KernelRecv::Socket,
        }
    }

    /// Kernel side `side`'s socket reached EOF: `Some(true)` when the peer's
    /// `close_notify` came first (a clean end), `Some(false)` when it did not (possibly a
    /// truncation attack: the stream must not look complete), `None` for other sides.
    pub fn kernel_eof(&self, side: Side) -> Option<bool> {
        match &self.sides[side.idx()] {
            State::Kernel(k) => Some(k.peer_closed),
            _ => None,
        }
    }

    /// `side`'s records are protected by this proxy, on the engine or in the kernel
    /// (after the handshake; `has` is false for a kernel side, whose socket carries
    /// plaintext to the proxy).
    #[inline]
    pub fn protected(&self, side: Side) -> bool {
        !matches!(self.sides[side.idx()], State::None)
    }

    /// The handshake of `side` is done: move its record protection to the kernel (with
    /// `kernel = Some((fd, idle))`, see [`Tls::hand_over_kernel`]) or to the engine.
    fn hand_over(
        &mut self,
        side: Side,
        cr: &mut Crypto,
        tag: u64,
        kernel_to: Option<(RawFd, bool)>,
    ) -> Result<Option<Fallback>, FeedError> {
        let i = side.idx();
        let State::Hs(h) = std::mem::take(&mut self.sides[i]) else {
            return Ok(None);
        };
        let Handshake {
            conn,
            inbuf,
            fed,
            out,
            mut out_off,
            out_end,
            ..
        } = *h;
        let general = |m: &str| FeedError::Tls(rustls::Error::General(m.into()));
        let (secrets, kernel, identity) = match conn {
            HsConn::Server(c) => {
                if self.keep_chain {
                    self.peer_chain = c
                        .peer_certificates()
                        .map(|certs| certs.iter().map(|d| d.clone().into_owned()).collect());
                }
                let leaf = c.peer_certificates().and_then(|certs| certs.first());
                self.cert_hash = leaf.map(|l| super::certs::sha256_hex(l.as_ref()).into());
                let id = leaf.and_then(|l| super::certs::spiffe_id(l.as_ref()));
                let (s, k) = c
                    .dangerous_into_kernel_connection()
                    .map_err(FeedError::Tls)?;
                (s, Kernel::Server(k), id)
            }
            HsConn::Client(c) => {
                let (s, k) = c
                    .dangerous_into_kernel_connection()
                    .map_err(FeedError::Tls)?;
                (s, Kernel::Client(k), None)
            }
        };
        if side == Side::Down {
            self.identity = identity.map(String::into_boxed_str);
        }
        let version = match &kernel {
            Kernel::Server(k) => k.protocol_version(),
            Kernel::Client(k) => k.protocol_version(),
        };
        let version = tickmesh_offload::rustls_keys::tls_version(version)
            .ok_or_else(|| general("negotiated a TLS version the offload engine does not serve"))?;
        let mut kernel = kernel;
        let mut fallback = None;
        if let Some((fd, idle)) = kernel_to {
            let left = &inbuf[fed.min(inbuf.len())..];
            match super::kernel::install(
                fd,
                idle,
                version,
                &secrets,
                kernel,
                &out[out_off..out_end],
                left,
            ) {
                Install::Done(k) => {
                    self.sides[i] = State::Kernel(k);
                    return Ok(None);
                }
                Install::Fallback(why, k, sent) => {
                    tracing::debug!(side = ?side, reason = why.reason(), "kTLS hand-over fell back to the offload engine");
                    kernel = k;
                    out_off += sent;
                    fallback = Some(why);
                }
                Install::Broken(e) => {
                    return Err(general(&format!("kernel TLS took TX but not RX: {e}")));
                }
            }
        }
        let params = SessionParams::from_rustls(version, &secrets, IN_FLIGHT_LIMIT)
            .map_err(|e| general(&format!("offload session: {e}")))?;
        let session = cr
            .engine
            .create_session(&params)
            .map_err(|e| general(&format!("offload session: {e}")))?;
        let mut r = Box::new(Records::new(
            kernel,
            session,
            version,
            params.suite,
            &out[out_off..out_end],
            &inbuf[fed.min(inbuf.len())..],
            cr.spare.pop().unwrap_or_default(),
        ));
        if r.pump(&mut cr.engine, tag) {
            push_waiter(cr, tag);
        }
        self.sides[i] = State::Rec(r);
        Ok(fallback)
    }

    /// Submit what `side`'s record layer can submit (after completions freed room).
    pub fn pump(&mut self, side: Side, cr: &mut Crypto, tag: u64) {
        if let State::Rec(r) = &mut self.sides[side.idx()] {
            if r.pump(&mut cr.engine, tag) {
                push_waiter(cr, tag);
            }
        }
    }

    /// A job of `side` completed.
    pub fn complete(&mut self, side: Side, c: &Completion<'_>) {
        if let State::Rec(r) = &mut self.sides[side.idx()] {
            r.complete(c);
        }
    }

    /// A failure the record layer found since the last call.
    pub fn take_error(&mut self) -> Option<(Side, FeedError)> {
        for side in [Side::Down, Side::Up] {
            if let State::Rec(r) = &mut self.sides[side.idx()] {
                if let Some(e) = r.take_error() {
                    return Some((side, FeedError::Record(e)));
                }
            }
        }
        None
    }

    /// Records completed and the first failure found since the last call; after a
    /// failure was reported (`failed` set) only the counts.
    pub fn activity(&mut self) -> Activity {
        let records = self.take_counts();
        let error = if self.failed.is_none() {
            self.take_error()
        } else {
            None
        };
        Activity { records, error }
    }

    /// Let every side past its handshake submit what it can to the offload engine.
    pub fn pump_all(&mut self, slot: u32, gen: u16, cr: &mut Crypto) {
        for side in [Side::Down, Side::Up] {
            if self.has(side) && !self.handshaking(side) {
                self.pump(side, cr, tag(slot, gen, side));
            }
        }
    }

    /// Bytes of plaintext `side`'s sealer can take now (0 without a record layer).
    pub fn plain_room(&self, side: Side) -> usize {
        match &self.sides[side.idx()] {
            State::Rec(r) => r.plain_room(),
            _ => 0,
        }
    }

    /// Records each side's engine completed since the last call.
    pub fn take_counts(&mut self) -> [u32; 2] {
        let mut out = [0; 2];
        for (i, s) in self.sides.iter_mut().enumerate() {
            if let State::Rec(r) = s {
                out[i] = r.take_count();
            }
        }
        out
    }

    /// Destroy the engine sessions (the connection closes). In-flight jobs still
    /// complete; their tags no longer match a tenant and they are dropped.
    pub fn release(&mut self, cr: Option<&mut Crypto>) {
        let Some(cr) = cr else {
            return;
        };
        for s in &mut self.sides {
            if let State::Rec(r) = std::mem::take(s) {
                let _ = cr.engine.destroy_session(r.session());
                if cr.spare.len() < SPARE_BUFS {
                    // Within the capacity reserved at start: no reallocation.
                    cr.spare.extend(r.into_bufs());
                }
            }
        }
    }

    /// Destroy `side`'s engine session and forget the side (its socket is dropped;
    /// the other side goes on).
    pub fn release_side(&mut self, side: Side, cr: Option<&mut Crypto>) {
        if let (State::Rec(r), Some(cr)) = (&self.sides[side.idx()], cr) {
            let _ = cr.engine.destroy_session(r.session());
        }
        self.sides[side.idx()] = State::None;
    }

    /// Take `side`'s session out to park it with its socket. `Err`: there is one but
    /// it is not quiet (records in flight or waiting), so the socket cannot be parked;
    /// `Ok(None)`: the side has no session.
    pub fn park(&mut self, side: Side) -> Result<Option<Parked>, NotQuiet> {
        match &self.sides[side.idx()] {
            State::None => Ok(None),
            State::Rec(r)
                if !r.tx_pending()
                    && !r.rx_busy()
                    && !r.pending()
                    && !r.failed()
                    && !r.peer_closed =>
            {
                Ok(Some(Parked(std::mem::take(&mut self.sides[side.idx()]))))
            }
            // The kernel keeps the keys and sequence numbers with the socket.
            State::Kernel(k) if kernel_quiet(k) => {
                Ok(Some(Parked(std::mem::take(&mut self.sides[side.idx()]))))
            }
            _ => Err(NotQuiet),
        }
    }

    /// Continue a parked session on `side` (its socket was attached to this connection).
    pub fn unpark(&mut self, side: Side, p: Parked) {
        self.sides[side.idx()] = p.0;
    }

    /// `side`'s socket reached EOF.
    pub fn eof(&mut self, side: Side) {
        match &mut self.sides[side.idx()] {
            State::None | State::Kernel(_) => {}
            State::Hs(h) => h.eof = true,
            State::Rec(r) => r.socket_eof = true,
        }
    }

    /// Decrypted bytes from `side` into `out`.
    pub fn read_plain(&mut self, side: Side, out: &mut [u8]) -> Plain {
        match &mut self.sides[side.idx()] {
            State::None => Plain::Empty,
            State::Hs(h) => {
                if h.eof && !h.end_reported {
                    h.end_reported = true;
                    Plain::Truncated
                } else {
                    Plain::Empty
                }
            }
            State::Kernel(k) => match k.read_plain(out) {
                Some(n) => Plain::Data(n),
                None => Plain::Empty,
            },
            State::Rec(r) => match r.read_plain(out) {
                Some(0) if r.closed_cleanly() => Plain::Closed,
                Some(0) => Plain::Truncated,
                Some(n) => Plain::Data(n),
                None => Plain::Empty,
            },
        }
    }

    /// Plaintext to be sealed towards `side` (the caller checked `can_take_plain`).
    pub fn write_plain(&mut self, side: Side, data: &[u8]) {
        if let State::Rec(r) = &mut self.sides[side.idx()] {
            r.write_plain(data);
        }
    }

    /// Bytes for `side`'s socket into `out`; 0 when there are none.
    pub fn write_tls(&mut self, side: Side, out: &mut [u8]) -> usize {
        match &mut self.sides[side.idx()] {
            State::None | State::Kernel(_) => 0,
            State::Hs(h) => {
                let p = h.pending_out();
                let n = p.len().min(out.len());
                out[..n].copy_from_slice(&p[..n]);
                h.out_off += n;
                if h.out_off == h.out_end {
                    h.out_off = 0;
                    h.out_end = 0;
                }
                n
            }
            State::Rec(r) => r.write_tls(out),
        }
    }

    /// Queue `close_notify` towards `side` (once). `false` when there is no session.
    pub fn close(&mut self, side: Side) -> bool {
        match &mut self.sides[side.idx()] {
            State::Rec(r) if !r.close_sent() => {
                r.close();
                true
            }
            _ => false,
        }
    }

    /// `close_notify` was sealed towards `side` (or it has no record layer to send one).
    pub fn close_sent(&self, side: Side) -> bool {
        match &self.sides[side.idx()] {
            State::Rec(r) => r.close_sent(),
            _ => true,
        }
    }

    /// The client's SPIFFE ID from its verified certificate.
    pub fn client_identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The SHA-256 of the client's verified certificate, lowercase hex.
    pub fn client_cert_hash(&self) -> Option<&str> {
        self.cert_hash.as_deref()
    }

    /// Whether the downstream client may connect (`allowed_principals`).
    pub fn client_allowed(&self) -> bool {
        let Some(s) = &self.server else {
            return true;
        };
        if s.principals.is_empty() {
            return true;
        }
        match self.client_identity() {
            Some(id) => s.principals.iter().any(|p| **p == *id),
            None => false,
        }
    }

    /// Take `side`'s rustls half out of its record layer (tests).
    #[cfg(test)]
    pub(crate) fn take_kernel(&mut self, side: Side) -> Option<Kernel> {
        match std::mem::take(&mut self.sides[side.idx()]) {
            State::Rec(r) => Some(r.into_kernel()),
            _ => None,
        }
    }

    /// Make `side` a kernel side (tests).
    #[cfg(test)]
    pub(crate) fn put_kernel(&mut self, side: Side, k: KernelSide) {
        self.sides[side.idx()] = State::Kernel(Box::new(k));
    }

    /// Set the key-update interval of `side`'s record layer (tests).
    pub fn set_key_update_after(&mut self, side: Side, records: u64) {
        if let State::Rec(r) = &mut self.sides[side.idx()] {
            r.key_update_after = records;
        }
    }
}

fn push_waiter(cr: &mut Crypto, tag: u64) {
    let (slot, gen, _) = untag(tag);
    if cr.waiters.last() != Some(&(slot, gen)) {
        // Bounded by the worker's connections; grows only past its initial capacity.
        cr.waiters.push((slot, gen));
    }
}
