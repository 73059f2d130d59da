//! The TLS layer of one proxied TCP connection: a rustls session per side that needs
//! one (server on the downstream side, client on the upstream side), fed with the bytes
//! a socket delivered and drained into pool buffers for the relay to send.
//!
//! Owns the sessions and their per-side flags; the relay (`proxy::l4::tcp`) owns the
//! sockets and the queues. Never blocks and never does I/O itself: rustls reads from and
//! writes to byte slices only. Memory stays bounded because the relay reads a side only
//! when that side's decrypted bytes were passed on and the other side's session has no
//! ciphertext waiting.
//!
//! rustls does the record protection here (AES-GCM / ChaCha20-Poly1305 from `ring`),
//! and with it KeyUpdate both ways, NewSessionTicket, alerts, `close_notify`, record
//! size limits (`record_overflow`) and sequence-number limits (RFC 8446 §5.5).

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::{ClientConnection, Connection, ServerConnection};

use super::{ClientTls, Mode, ServerTls};
use crate::proxy::l4::Side;

/// The first byte of a TLS handshake record (RFC 8446 §5.1, `ContentType.handshake`).
const HANDSHAKE: u8 = 22;

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
    /// Nothing buffered.
    Empty,
    /// The peer sent `close_notify` and everything before it was read.
    Closed,
    /// The peer's socket ended without `close_notify` (possible truncation attack).
    Truncated,
}

/// Why feeding bytes to a session failed.
#[derive(Debug)]
pub enum FeedError {
    /// The peer broke the protocol or failed verification; rustls queued the alert.
    Tls(rustls::Error),
    /// rustls refused more input (its plaintext buffer is full): the relay read when it
    /// should not have. Closed without an alert.
    Overrun,
}

#[derive(Debug, Default)]
pub struct Tls {
    sides: [Option<Connection>; 2],
    /// Termination policy of the listener (downstream side).
    pub server: Option<Arc<ServerTls>>,
    /// Waiting for the client's first byte to choose TLS or plaintext.
    sniffing: bool,
    /// rustls holds decrypted bytes not yet read out.
    pending: [bool; 2],
    /// The peer sent `close_notify` (or its socket ended).
    peer_closed: [bool; 2],
    close_sent: [bool; 2],
    handshake_done: [bool; 2],
    /// A fatal error on this side: its alert is flushed, then the connection closes.
    pub failed: Option<Side>,
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
        let mut conn = ClientConnection::new(c.config.clone(), c.name.clone())?;
        // Bounded by the relay's flow control instead (see module doc).
        conn.set_buffer_limit(None);
        self.sides[Side::Up.idx()] = Some(conn.into());
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
            match ServerConnection::new(s.config.clone()) {
                Ok(mut c) => {
                    c.set_buffer_limit(None);
                    self.sides[Side::Down.idx()] = Some(c.into());
                }
                // Only a config rustls itself rejects; the caller closes.
                Err(_) => return Sniff::Rejected,
            }
        }
        verdict
    }

    #[inline]
    pub fn has(&self, side: Side) -> bool {
        self.sides[side.idx()].is_some()
    }

    /// The side's handshake is not finished (or not started: still sniffing).
    #[inline]
    pub fn handshaking(&self, side: Side) -> bool {
        (side == Side::Down && self.sniffing)
            || self.sides[side.idx()]
                .as_ref()
                .is_some_and(|c| c.is_handshaking())
    }

    #[inline]
    pub fn wants_write(&self, side: Side) -> bool {
        self.sides[side.idx()]
            .as_ref()
            .is_some_and(|c| c.wants_write())
    }

    #[inline]
    pub fn pending(&self, side: Side) -> bool {
        self.pending[side.idx()]
    }

    #[inline]
    pub fn peer_closed(&self, side: Side) -> bool {
        self.peer_closed[side.idx()]
    }

    /// Bytes received from `side`'s socket. `Ok(true)` when this completed the handshake.
    pub fn feed(&mut self, side: Side, mut data: &[u8]) -> Result<bool, FeedError> {
        let i = side.idx();
        let Some(c) = self.sides[i].as_mut() else {
            return Ok(false);
        };
        while !data.is_empty() {
            match c.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return Err(FeedError::Overrun),
            }
            let st = c.process_new_packets().map_err(FeedError::Tls)?;
            self.pending[i] = st.plaintext_bytes_to_read() > 0;
            self.peer_closed[i] |= st.peer_has_closed();
        }
        let done = !c.is_handshaking() && !self.handshake_done[i];
        self.handshake_done[i] |= done;
        Ok(done)
    }

    /// `side`'s socket reached EOF.
    pub fn eof(&mut self, side: Side) {
        let i = side.idx();
        if let Some(c) = self.sides[i].as_mut() {
            // Reading from an empty slice tells rustls the transport ended.
            let _ = c.read_tls(&mut &[][..]);
            let _ = c.process_new_packets();
            // Let the reader report Closed or Truncated.
            self.pending[i] = true;
        }
        self.peer_closed[i] = true;
    }

    /// Decrypted bytes from `side` into `out`.
    pub fn read_plain(&mut self, side: Side, out: &mut [u8]) -> Plain {
        let i = side.idx();
        let Some(c) = self.sides[i].as_mut() else {
            self.pending[i] = false;
            return Plain::Empty;
        };
        match c.reader().read(out) {
            Ok(0) => {
                self.pending[i] = false;
                self.peer_closed[i] = true;
                Plain::Closed
            }
            Ok(n) => Plain::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.pending[i] = false;
                Plain::Empty
            }
            Err(_) => {
                self.pending[i] = false;
                self.peer_closed[i] = true;
                Plain::Truncated
            }
        }
    }

    /// Plaintext to be encrypted towards `side`.
    pub fn write_plain(&mut self, side: Side, data: &[u8]) {
        if let Some(c) = self.sides[side.idx()].as_mut() {
            // The buffer limit is off: the whole slice is taken.
            let _ = c.writer().write_all(data);
        }
    }

    /// Ciphertext for `side`'s socket into `out`; 0 when there is none.
    pub fn write_tls(&mut self, side: Side, out: &mut [u8]) -> usize {
        let Some(c) = self.sides[side.idx()].as_mut() else {
            return 0;
        };
        let total = out.len();
        let mut w: &mut [u8] = out;
        while c.wants_write() && !w.is_empty() {
            match c.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        total - w.len()
    }

    /// Queue `close_notify` towards `side` (once). `false` when there is no session.
    pub fn close(&mut self, side: Side) -> bool {
        let i = side.idx();
        match self.sides[i].as_mut() {
            Some(c) if !self.close_sent[i] => {
                c.send_close_notify();
                self.close_sent[i] = true;
                true
            }
            _ => false,
        }
    }

    pub fn close_sent(&self, side: Side) -> bool {
        !self.has(side) || self.close_sent[side.idx()]
    }

    /// The client's SPIFFE ID from its verified certificate.
    pub fn client_identity(&self) -> Option<String> {
        let c = self.sides[Side::Down.idx()].as_ref()?;
        let leaf = c.peer_certificates()?.first()?;
        super::certs::spiffe_id(leaf.as_ref())
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
}
