//! TLS under an HTTP connection: the socket-facing half of [`Conn`] when a side speaks
//! TLS (the listener terminates, or the cluster originates). The HTTP state machine
//! above keeps working on plaintext exactly as without TLS; this module sits where its
//! bytes meet a socket:
//!
//! - **In.** A receive on a TLS side reads ciphertext into the session
//!   ([`crate::tls::conn::Tls::feed`]); records are opened on the worker's offload engine;
//!   decrypted bytes are handed up as if a plaintext receive had brought them
//!   ([`Conn::land`]), but only when the HTTP side asked for bytes (`arm_recv` sets
//!   `want`), so flow control is the same as without TLS. The socket is read only for
//!   a handshake, or when the HTTP side wants bytes and no record is still being opened.
//! - **Out.** `send_front` towards a TLS side moves plaintext from the HTTP queue into
//!   the session's sealer (the queue's buffers go back to the pool at once); sealed
//!   records leave through one ciphertext buffer per side, whose send uses the queue's
//!   `inflight` flag, so "nothing in flight" keeps meaning the same.
//! - **End.** A graceful close of a client connection first seals `close_notify` and
//!   sends what is left (bounded by [`LINGER_MS`]); a TLS failure sends the alert rustls or
//!   the record layer queued, counts it (as on L4: [`crate::tls::conn::FeedError`]), and
//!   closes.
//! - **Kernel TLS** (`offload.backend: ktls`). A side whose handshake ends is handed to
//!   the kernel by the same hand-over as the L4 relay's ([`Tls::hand_over_kernel`], from
//!   the receive that ended the handshake, so nothing is armed on the socket); counted
//!   as a hand-over or, when it stays on the engine, a fallback with its reason. A kernel
//!   side is a plaintext side to the HTTP state machine (`tls_on` is false for it) except
//!   for: plaintext that came with the handshake (handed up before its socket is read
//!   again), receive errors (`EIO`: a control record — alert, ticket, KeyUpdate — read
//!   here; `EBADMSG`/`EMSGSIZE`/`EINVAL`: a bad record), an EOF without `close_notify`
//!   (a truncation, as on the ring), a KeyUpdate owed to the peer (sent once nothing is in
//!   flight towards it; plaintext waits until then) and `close_notify` at a graceful
//!   close. A kernel upstream side parks in the pool with its socket like a ring side.
//!   Identity, XFCC and principals come from the handshake, before the hand-over.
//!
//! Never blocks; allocates per connection only (the session, at accept or connect);
//! nothing per record. The kernel paths make one syscall per control record or close,
//! never per application record.

use std::sync::Arc;

use super::{Conn, Phase};
use crate::proxy::l4::{BufId, Ctx, Io, Side, Step};
use crate::telemetry::{ListenerCounter as L, UpstreamCounter as U};
use crate::tls::conn::{self as tlsconn, Activity, FeedError, HandOver, KernelRecv, Plain, Tls};
use crate::tls::kernel::Control;
use crate::tls::xfcc::Xfcc;
use crate::tls::ServerTls;

/// How long a closing client connection may take to flush its last records and
/// `close_notify` before it is closed regardless.
const LINGER_MS: u64 = 1000;

/// The TLS sessions of one HTTP connection and their socket-side state.
#[derive(Debug)]
pub(super) struct Layer {
    pub t: Box<Tls>,
    /// The HTTP side asked for bytes from this side (its `arm_recv`).
    want: [bool; 2],
    /// Ciphertext towards this side being sent: (buffer, offset, length).
    tx: [Option<(BufId, u32, u32)>; 2],
    /// Closing gracefully: give up flushing at this time.
    linger_until: Option<u64>,
    /// The listener's `x-forwarded-client-cert` policy.
    xfcc: Xfcc,
    /// This proxy's XFCC element for the client, built when its handshake ended.
    xfcc_element: Option<Box<str>>,
}

impl Layer {
    /// Terminate TLS from the client; `ktls`: the worker's engine hands keys to the
    /// kernel after handshakes.
    pub fn server(s: Arc<ServerTls>, xfcc: Xfcc, ktls: bool) -> Box<Layer> {
        let mut t = Tls::server(s);
        t.keep_peer_chain(xfcc.sets_own(true));
        t.want_kernel(ktls);
        let mut l = Layer::with(t);
        l.xfcc = xfcc;
        l
    }

    fn with(t: Box<Tls>) -> Box<Layer> {
        Box::new(Layer {
            t,
            want: [false; 2],
            tx: [None; 2],
            linger_until: None,
            xfcc: Xfcc::default(),
            xfcc_element: None,
        })
    }

    /// Sniffing chose opaque TCP: the session and what is in flight on the client's
    /// socket go to the relay (`recv_armed`: a receive is armed on it; `tx_inflight`: the
    /// ciphertext in `tx` towards it is being sent).
    pub(super) fn into_carry(
        self,
        recv_armed: bool,
        tx_inflight: bool,
    ) -> crate::proxy::l4::tcp::TlsCarry {
        crate::proxy::l4::tcp::TlsCarry {
            tls: self.t,
            recv_armed,
            tx: self.tx[Side::Down.idx()],
            tx_inflight,
        }
    }

    /// The client's handshake ended: build this proxy's XFCC element once, if the
    /// listener sets one and the client presented a verified certificate.
    fn client_verified(&mut self) {
        if let Some(chain) = self.t.take_peer_chain() {
            let by = self.own_uri();
            self.xfcc_element = crate::tls::xfcc::element(by, &chain, self.xfcc.details)
                .map(String::into_boxed_str);
        }
    }
}

impl Layer {
    /// The client's request came through a TLS session (`X-Forwarded-Proto: https`).
    #[inline]
    pub fn client_tls(&self) -> bool {
        self.t.protected(Side::Down)
    }

    /// The client's SPIFFE ID, from its verified certificate.
    pub fn identity(&self) -> Option<&str> {
        self.t.client_identity()
    }

    /// The SHA-256 of the client's certificate (`Hash=` of `x-forwarded-client-cert`).
    pub fn cert_hash(&self) -> Option<&str> {
        self.t.client_cert_hash()
    }

    /// The URI SAN of the listener's certificate (`By=` of `x-forwarded-client-cert`).
    pub fn own_uri(&self) -> Option<&str> {
        self.t.server.as_deref().and_then(|s| s.uri.as_deref())
    }

    /// This proxy's `x-forwarded-client-cert` element for the client (mTLS only).
    pub fn xfcc_element(&self) -> Option<&str> {
        self.xfcc_element.as_deref()
    }
}

/// What a turn of the TLS layer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    Idle,
    /// Plaintext (or the end of a stream) was handed to the HTTP side.
    Delivered,
    /// The connection took this step (failure, closing).
    Done(Step),
}

impl Conn {
    /// `side` is a TLS side (or the client's, still being sniffed).
    #[inline]
    pub(super) fn tls_on(&self, side: Side) -> bool {
        self.tls
            .as_deref()
            .is_some_and(|l| l.t.has(side) || (side == Side::Down && l.t.sniffing()))
    }

    /// The TLS layer hands `side`'s bytes up: a TLS side, or a kernel side with
    /// plaintext from its handshake still in hand (its socket is read once that is out).
    #[inline]
    pub(super) fn tls_reads(&self, side: Side) -> bool {
        self.tls_on(side) || self.tls_kernel_pending(side)
    }

    #[inline]
    fn tls_kernel_pending(&self, side: Side) -> bool {
        self.tls
            .as_deref()
            .is_some_and(|l| l.t.is_kernel(side) && l.t.pending(side))
    }

    /// Plaintext towards kernel side `to` must wait (a KeyUpdate is owed first, or our
    /// `close_notify` or alert went out).
    #[inline]
    pub(super) fn tls_holds(&self, to: Side) -> bool {
        self.tls
            .as_deref()
            .is_some_and(|l| l.t.is_kernel(to) && !l.t.can_take_plain(to, 0))
    }

    /// The HTTP side wants bytes from TLS side `side` (its `arm_recv`).
    #[inline]
    pub(super) fn tls_want(&mut self, side: Side) {
        let s = side.idx();
        if !self.eof[s] && self.pend[s].is_none() {
            if let Some(l) = self.tls.as_deref_mut() {
                l.want[s] = true;
            }
        }
    }

    /// Move plaintext queued from `from` into the sealer of `from.other()`, as far as
    /// it has room (partial entries are fine: the queue advances by bytes).
    pub(super) fn tls_take_plain(&mut self, from: Side, io: &mut impl Io) {
        let Some(l) = self.tls.as_deref_mut() else {
            return;
        };
        let to = from.other();
        let q = &mut self.out[from.idx()];
        while q.count > 0 {
            let room = l.t.plain_room(to);
            if room == 0 {
                break;
            }
            let (b, off, len) = q.front();
            let n = (len as usize).min(room);
            l.t.write_plain(to, &io.bytes(b)[off as usize..off as usize + n]);
            if let Some(done) = q.advance(n as u32) {
                io.release(done);
            }
        }
    }

    /// `n` ciphertext bytes towards `to` went out.
    pub(super) fn tls_sent(&mut self, to: Side, n: u32, io: &mut impl Io) {
        let Some(l) = self.tls.as_deref_mut() else {
            return;
        };
        if let Some((b, off, len)) = l.tx[to.idx()] {
            if n >= len {
                io.release(b);
                l.tx[to.idx()] = None;
            } else {
                l.tx[to.idx()] = Some((b, off + n, len - n));
            }
        }
    }

    /// Ciphertext arrived on TLS side `side`. `None`: the client's first bytes are
    /// plaintext and the listener accepts that (PERMISSIVE): the caller goes on as
    /// without TLS.
    pub(super) fn tls_recv(
        &mut self,
        slot: u32,
        side: Side,
        (b, n): (BufId, u32),
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        let gen = self.gen;
        let l = self.tls.as_deref_mut()?;
        if l.t.failed.is_some() {
            io.release(b); // nothing more is read from a failed connection
            return Some(Step::Continue);
        }
        if side == Side::Down && l.t.sniffing() {
            let verdict = l.t.sniff(io.bytes(b)[0]);
            if let Some(k) = verdict.counter() {
                self.lcount(cx.worker, k, 1);
            }
            if verdict == tlsconn::Sniff::Plain {
                return None;
            }
        }
        let l = self.tls.as_deref_mut()?;
        let tag = tlsconn::tag(slot, gen, side);
        let r = l.t.feed(side, &io.bytes(b)[..n as usize], cx.crypto(), tag);
        io.release(b);
        match r {
            Ok(false) => {}
            Ok(true) => {
                // With kTLS the keys go to the kernel first (the identity and the
                // client's chain are read from the handshake there).
                if let Some(step) = self.tls_hand_over(slot, side, cx, io) {
                    return Some(step);
                }
                match side {
                    Side::Down => {
                        if let Some(l) = self.tls.as_deref_mut() {
                            l.client_verified();
                        }
                        self.lcount(cx.worker, L::TlsHandshakes, 1)
                    }
                    Side::Up => self.ucount(cx.worker, U::TlsHandshakes, 1),
                }
            }
            Err(e) => return Some(self.tls_broke(slot, (side, e), cx, io)),
        }
        Some(self.drive(slot, cx, io))
    }

    /// `side`'s handshake just ended in a receive (nothing is armed on its socket): with
    /// kTLS, hand its keys to the kernel, or count why it stays on the engine. `Some`: the
    /// connection took this step (the session could not continue anywhere).
    fn tls_hand_over(
        &mut self,
        slot: u32,
        side: Side,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        let fd = self.raw(side);
        let tag = tlsconn::tag(slot, self.gen, side);
        let queue_busy = self.out[side.other().idx()].inflight;
        let l = self.tls.as_deref_mut()?;
        // Plaintext queued for the side may wait: it is sealed by whoever takes over.
        let idle = !queue_busy && l.tx[side.idx()].is_none();
        match l.t.hand_over_kernel(side, fd, idle, cx.crypto(), tag) {
            Ok(h) => {
                if let Some((lc, uc)) = h.and_then(HandOver::counters) {
                    match side {
                        Side::Down => self.lcount(cx.worker, lc, 1),
                        Side::Up => self.ucount(cx.worker, uc, 1),
                    }
                }
                None
            }
            Err(e) => Some(self.tls_broke(slot, (side, e), cx, io)),
        }
    }

    /// A receive on a kernel side ended (`res` 0 or `-errno`, not `ENOBUFS`). `None`: not
    /// a kernel side, or an ending the caller handles as on a plaintext socket (a clean
    /// EOF after `close_notify`, a reset).
    pub(super) fn tls_kernel_end(
        &mut self,
        slot: u32,
        side: Side,
        res: i32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        let fd = self.raw(side);
        let tx_idle = !self.out[side.other().idx()].inflight;
        let l = self.tls.as_deref_mut()?;
        let clean = l.t.kernel_eof(side)?;
        if res == 0 {
            if clean {
                return None;
            }
            // The socket ended without close_notify: possibly truncated, so the stream
            // must not look complete (as on the ring).
            match side {
                Side::Down => self.lcount(cx.worker, L::TlsTruncated, 1),
                Side::Up => self.ucount(cx.worker, U::TlsErrors, 1),
            }
            return Some(self.on_eof(slot, side, -libc::ECONNRESET, cx, io));
        }
        match l.t.kernel_recv_failed(side, fd, -res, tx_idle) {
            KernelRecv::Control(c) => Some(self.tls_kernel_control(slot, side, c, cx, io)),
            KernelRecv::Record(e) => Some(self.tls_broke(slot, (side, e), cx, io)),
            KernelRecv::Socket => None,
        }
    }

    /// Act on what a kernel side's control record meant.
    fn tls_kernel_control(
        &mut self,
        slot: u32,
        side: Side,
        c: Control,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        match c {
            // A ticket, a KeyUpdate, data after all: read on.
            Control::Again | Control::Empty => self.drive(slot, cx, io),
            // close_notify: the stream ends here, cleanly; what follows is not read.
            Control::Closed => self.on_eof(slot, side, 0, cx, io),
            Control::Failed(e) => self.tls_broke(slot, (side, FeedError::Record(e)), cx, io),
            Control::RekeyUnsupported => {
                tracing::info!(
                    side = ?side,
                    "peer sent a TLS 1.3 KeyUpdate; this kernel cannot take new kTLS keys (needs Linux 6.14): closing"
                );
                let fd = self.raw(side);
                if let Some(l) = self.tls.as_deref_mut() {
                    l.t.kernel_close(side, fd);
                }
                match side {
                    Side::Down => {
                        self.lcount(cx.worker, L::TlsKtlsRekeyUnsupported, 1);
                        self.reset[Side::Up.idx()] = true;
                        self.close(slot, cx, io)
                    }
                    Side::Up => {
                        self.ucount(cx.worker, U::TlsKtlsRekeyUnsupported, 1);
                        let e = rustls::Error::General("kernel TLS cannot take new keys".into());
                        self.tls_broke(slot, (side, FeedError::Tls(e)), cx, io)
                    }
                }
            }
        }
    }

    /// The kernel part of a TLS turn for kernel side `side`: send a KeyUpdate owed to its
    /// peer once nothing is in flight towards it, and hand up plaintext from its
    /// handshake.
    fn tls_kernel_turn(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Turn {
        let fd = self.raw(side);
        let tx_idle = !self.out[side.other().idx()].inflight;
        let Some(l) = self.tls.as_deref_mut() else {
            return Turn::Idle;
        };
        if fd >= 0 && tx_idle && l.t.kernel_owes(side) {
            let c = l.t.kernel_settle(side, fd);
            if c != Control::Again {
                return Turn::Done(self.tls_kernel_control(slot, side, c, cx, io));
            }
            if !self.tls_holds(side) {
                // The plaintext that waited for it may go now.
                self.send_front(slot, side.other(), io);
            }
        }
        if self.tls_kernel_pending(side) {
            return self.tls_deliver(slot, side, cx, io);
        }
        Turn::Idle
    }

    /// The socket of TLS side `side` ended (`res` 0, or `-errno`). An upstream that
    /// hangs up during our handshake failed the connect; at EOF otherwise the session
    /// reports a clean close or a truncation once the bytes before it were read. `None`:
    /// a reset after the handshake, handled as without TLS.
    pub(super) fn tls_eof(
        &mut self,
        slot: u32,
        side: Side,
        res: i32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        let l = self.tls.as_deref_mut()?;
        if side == Side::Up && l.t.handshaking(side) {
            let e = rustls::Error::General("upstream closed during the handshake".into());
            return Some(self.tls_broke(slot, (side, FeedError::Tls(e)), cx, io));
        }
        if res < 0 {
            return None;
        }
        l.t.eof(side);
        Some(self.drive(slot, cx, io))
    }

    /// `side`'s peer broke TLS: count it, send the alert queued for it, then close
    /// (the other side with a reset). A failed upstream handshake is a connect failure
    /// for the exchange (503, retried as one).
    fn tls_broke(
        &mut self,
        slot: u32,
        (side, e): (Side, FeedError),
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let Some(l) = self.tls.as_deref_mut() else {
            return self.close(slot, cx, io);
        };
        let handshaking = l.t.handshaking(side);
        tracing::debug!(side = ?side, error = ?e, "TLS failure");
        match side {
            Side::Down => {
                l.t.failed = Some(side);
                self.lcount(cx.worker, e.down_counter(handshaking), 1);
                self.reset[Side::Up.idx()] = true;
                if matches!(e, FeedError::Overrun) {
                    return self.close(slot, cx, io);
                }
                self.drive(slot, cx, io)
            }
            Side::Up => {
                self.ucount(cx.worker, U::TlsErrors, 1);
                self.tls_drop_up(cx, io);
                self.up_reusable = false;
                if self.phase != Phase::Exchange {
                    return self.drive(slot, cx, io);
                }
                let f = if handshaking {
                    self.outlier(cx.worker, crate::cluster::health::Outcome::LocalFailure);
                    super::Fail::Status(
                        503,
                        L::HttpNoHealthyUpstream,
                        "upstream TLS handshake failed\n",
                        super::Cause::Connect,
                    )
                } else if self.awaiting_head {
                    super::Fail::Status(
                        502,
                        L::HttpBadGateway,
                        "upstream TLS session failed\n",
                        super::Cause::Reset,
                    )
                } else {
                    super::Fail::Reset
                };
                self.fail(slot, f, cx, io)
            }
        }
    }

    /// A record job of `side` completed (the worker reaps and calls this; it may not
    /// submit from here). [`Conn::crypto_done`] follows.
    pub fn on_crypto(&mut self, side: Side, c: &tickmesh_offload::Completion<'_>) {
        if let Some(l) = self.tls.as_deref_mut() {
            l.t.complete(side, c);
        }
    }

    /// After reaping: move what the completions produced, submit more.
    pub fn crypto_done(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.tls.is_none() || matches!(self.phase, Phase::Free | Phase::Closing) {
            return Step::Continue;
        }
        self.drive(slot, cx, io)
    }

    /// A new upstream connection is up: originate TLS when its cluster says so (the
    /// ClientHello goes out with the next turn). `Some`: it could not start (counted,
    /// the exchange failed as a connect failure).
    pub(super) fn tls_start_up(
        &mut self,
        slot: u32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        let origin = self
            .table
            .as_ref()
            .and_then(|t| t.clusters.get(self.cluster as usize))
            .and_then(|c| c.tls.clone())?;
        let ktls = cx.crypto().engine.ktls_enabled();
        let l = self.tls.get_or_insert_with(|| Layer::with(Tls::empty()));
        l.t.want_kernel(ktls);
        if l.t.start_client(&origin).is_ok() {
            return None;
        }
        let e = FeedError::Tls(rustls::Error::General("client session".into()));
        Some(self.tls_broke(slot, (Side::Up, e), cx, io))
    }

    /// The upstream side's session, to park with its socket (see [`Tls::park`]).
    pub(super) fn tls_park_up(&mut self) -> Result<Option<tlsconn::Parked>, tlsconn::NotQuiet> {
        let Some(l) = self.tls.as_deref_mut() else {
            return Ok(None);
        };
        if l.tx[Side::Up.idx()].is_some() {
            return Err(tlsconn::NotQuiet);
        }
        l.want[Side::Up.idx()] = false;
        l.t.park(Side::Up)
    }

    /// A pooled connection's session continues on this connection.
    pub(super) fn tls_unpark_up(&mut self, p: tlsconn::Parked) {
        let l = self.tls.get_or_insert_with(|| Layer::with(Tls::empty()));
        l.t.unpark(Side::Up, p);
    }

    /// Forget the upstream side's session (its socket is being dropped): its
    /// ciphertext buffer goes back, its engine session is destroyed.
    pub(super) fn tls_drop_up(&mut self, cx: &mut Ctx, io: &mut impl Io) {
        let Some(l) = self.tls.as_deref_mut() else {
            return;
        };
        if let Some((b, _, _)) = l.tx[Side::Up.idx()].take() {
            io.release(b);
        }
        l.want[Side::Up.idx()] = false;
        let up = l.t.take_counts()[Side::Up.idx()];
        l.t.release_side(Side::Up, cx.crypto.as_mut());
        self.tls_count_records(cx.worker, [0, up]);
    }

    /// Count TLS records the offload engine completed, per side (down, up).
    fn tls_count_records(&self, worker: usize, [down, up]: [u32; 2]) {
        if down > 0 {
            self.lcount(worker, L::TlsRecordsOffloaded, down.into());
        }
        if up > 0 {
            self.ucount(worker, U::TlsRecordsOffloaded, up.into());
        }
    }

    /// One turn of the TLS layer, after each step of the HTTP state machine: count what
    /// the record layers did, move plaintext into the sealers, submit jobs, send
    /// ciphertext, read sockets, hand decrypted bytes up.
    pub(super) fn tls_turn(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Turn {
        let gen = self.gen;
        let Some(l) = self.tls.as_deref_mut() else {
            return Turn::Idle;
        };
        let Activity { records, error } = l.t.activity();
        self.tls_count_records(cx.worker, records);
        if let Some((side, e)) = error {
            return Turn::Done(self.tls_broke(slot, (side, e), cx, io));
        }
        for side in [Side::Down, Side::Up] {
            if (side == Side::Down || self.connected) && self.tls_on(side) {
                self.tls_take_plain(side.other(), io);
            }
        }
        let Some(l) = self.tls.as_deref_mut() else {
            return Turn::Idle;
        };
        l.t.pump_all(slot, gen, cx.crypto());
        let mut delivered = false;
        for side in [Side::Down, Side::Up] {
            if !self.tls_on(side) {
                if self.tls.as_deref().is_some_and(|l| l.t.is_kernel(side)) {
                    match self.tls_kernel_turn(slot, side, cx, io) {
                        Turn::Idle => {}
                        Turn::Delivered => delivered = true,
                        done @ Turn::Done(_) => return done,
                    }
                }
                continue;
            }
            self.tls_flush(slot, side, cx, io);
            match self.tls_deliver(slot, side, cx, io) {
                Turn::Idle => {}
                Turn::Delivered => delivered = true,
                // The end of a stream was handled (and driven) by the HTTP side.
                done @ Turn::Done(_) => return done,
            }
            self.tls_read(slot, side, io);
        }
        if let Some(f) = self.tls.as_deref().and_then(|l| l.t.failed) {
            // The alert goes out, then the connection closes.
            let l = self.tls.as_deref().expect("checked above");
            if !l.t.tx_pending(f) && l.tx[f.idx()].is_none() || self.fds[f.idx()].is_none() {
                return Turn::Done(self.close(slot, cx, io));
            }
            return Turn::Done(Step::Continue);
        }
        if delivered {
            Turn::Delivered
        } else {
            Turn::Idle
        }
    }

    /// Send the next ciphertext towards `side` if none is on its way.
    fn tls_flush(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) {
        let fd = self.raw(side);
        if fd < 0 || (side == Side::Up && !self.connected) {
            return;
        }
        let me = self.me(slot);
        let Some(l) = self.tls.as_deref_mut() else {
            return;
        };
        let q = &mut self.out[side.other().idx()];
        if q.inflight || !l.t.wants_write(side) {
            return;
        }
        let Some(b) = io.take() else {
            return self.tls_starve(slot, side, cx);
        };
        let n = l.t.write_tls(side, io.bytes_mut(b)) as u32;
        if n == 0 {
            io.release(b);
            return;
        }
        l.tx[side.idx()] = Some((b, 0, n));
        q.inflight = true;
        io.send(me, side.other(), fd, b, 0, n);
    }

    /// No spare pool buffer for `side`'s records: wait on the worker's starved list
    /// (its `rearm` drives the connection again once buffers come back).
    fn tls_starve(&mut self, slot: u32, side: Side, cx: &mut Ctx) {
        if !self.starved[side.idx()] {
            self.starved[side.idx()] = true;
            cx.starved.push((slot, side));
        }
    }

    /// Hand decrypted bytes (or the end of the stream) from `side` up, when wanted.
    fn tls_deliver(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Turn {
        let s = side.idx();
        let Some(l) = self.tls.as_deref() else {
            return Turn::Idle;
        };
        if !l.want[s] || self.pend[s].is_some() || l.t.failed.is_some() || !l.t.pending(side) {
            return Turn::Idle;
        }
        if !self.wants(side) {
            return Turn::Idle; // stays in the session until the HTTP side asks again
        }
        let Some(b) = io.take() else {
            self.tls_starve(slot, side, cx);
            return Turn::Idle;
        };
        let Some(l) = self.tls.as_deref_mut() else {
            io.release(b);
            return Turn::Idle;
        };
        let got = l.t.read_plain(side, io.bytes_mut(b));
        if got != Plain::Empty {
            l.want[s] = false;
        }
        match got {
            Plain::Data(n) => {
                self.land(side, b, n as u32, cx.now_ms, io);
                Turn::Delivered
            }
            Plain::Empty => {
                io.release(b);
                Turn::Idle
            }
            Plain::Closed => {
                io.release(b);
                Turn::Done(self.on_eof(slot, side, 0, cx, io))
            }
            Plain::Truncated => {
                io.release(b);
                match side {
                    Side::Down => self.lcount(cx.worker, L::TlsTruncated, 1),
                    Side::Up => self.ucount(cx.worker, U::TlsErrors, 1),
                }
                // A stream cut short must not look complete: as a reset.
                Turn::Done(self.on_eof(slot, side, -libc::ECONNRESET, cx, io))
            }
        }
    }

    /// Read the socket of `side` when its handshake needs bytes, or when the HTTP side
    /// wants bytes and no record is still being opened.
    fn tls_read(&mut self, slot: u32, side: Side, io: &mut impl Io) {
        let s = side.idx();
        let fd = self.raw(side);
        let Some(l) = self.tls.as_deref() else {
            return;
        };
        if self.recv_armed[s] || self.eof[s] || self.starved[s] || fd < 0 {
            return;
        }
        if side == Side::Up && !self.connected {
            return;
        }
        let t = &l.t;
        if t.failed.is_some() || t.peer_closed(side) {
            return;
        }
        // The read policy shadows share ([`Tls::should_read`]).
        let read = t.should_read(side, l.want[s], crate::proxy::l4::tcp::BUF_SIZE);
        // A socket past its handshake keeps one multishot receive, as without TLS (the
        // handshake stays single-shot: a kTLS hand-over needs nothing armed). An
        // upstream socket's stays armed while it idles in the pool, where its session
        // hears late tickets and KeyUpdates (`park_up`, `Io::park_session`).
        let multi = !t.handshaking(side);
        if read {
            self.recv_armed[s] = true;
            if multi {
                io.recv_multi(self.me(slot), side, fd);
            } else {
                io.recv(self.me(slot), side, fd);
            }
        }
    }

    /// A graceful close of a TLS client connection: seal `close_notify` and flush what
    /// is left first. `true`: still flushing (the close is retried as sends complete).
    pub(super) fn tls_linger(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> bool {
        let gen = self.gen;
        let now = cx.now_ms;
        let down = Side::Down;
        let fd = self.raw(down);
        let sending = self.out[Side::Up.idx()].inflight;
        let Some(l) = self.tls.as_deref_mut() else {
            return false;
        };
        if l.t.is_kernel(down) {
            if self.reset[down.idx()] || fd < 0 || l.t.failed.is_some() {
                return false;
            }
            if sending && l.linger_until.is_none_or(|t| now < t) {
                // The last plaintext is still on its way into the socket: close_notify
                // must follow it, not overtake it.
                l.linger_until.get_or_insert(now + LINGER_MS);
                return true;
            }
            l.t.kernel_close(down, fd);
            return false;
        }
        if self.reset[down.idx()]
            || self.fds[down.idx()].is_none()
            || !l.t.has(down)
            || l.t.handshaking(down)
            || l.t.failed.is_some()
            || l.linger_until.is_some_and(|t| now >= t)
        {
            return false;
        }
        if l.linger_until.is_none() {
            l.linger_until = Some(now + LINGER_MS);
            l.t.close(down);
        }
        // Nothing more is wanted from the client.
        l.want = [false; 2];
        l.t.pump_all(slot, gen, cx.crypto());
        self.tls_flush(slot, down, cx, io);
        let Some(l) = self.tls.as_deref() else {
            return false;
        };
        l.t.tx_pending(down) || l.tx[down.idx()].is_some()
    }

    /// Closing gracefully (see [`Conn::tls_linger`]).
    #[inline]
    pub(super) fn tls_lingering(&self) -> bool {
        self.tls
            .as_deref()
            .is_some_and(|l| l.linger_until.is_some())
    }

    /// The connection closes: ciphertext buffers back to the pool, engine sessions
    /// destroyed.
    pub(super) fn tls_release(&mut self, cx: &mut Ctx, io: &mut impl Io) {
        let Some(mut l) = self.tls.take() else {
            return;
        };
        // Records completed since the last turn (the closing turn's own) still count.
        let records = l.t.take_counts();
        self.tls_count_records(cx.worker, records);
        for b in l.tx.iter_mut().filter_map(Option::take) {
            io.release(b.0);
        }
        l.t.release(cx.crypto.as_mut());
    }
}
