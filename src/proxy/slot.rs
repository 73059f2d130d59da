//! A worker's connection slot: the L4 TCP relay or an HTTP connection, chosen by the
//! listener's protocol at accept; an HTTP connection whose first bytes are not HTTP/1.x
//! becomes a TCP relay in the same slot (sniffing with a TCP fallback cluster). A slot
//! may also carry a mirrored request ([`Shadow`]), started by the worker, not by an
//! accept.
//!
//! Owns only the dispatch; the state machines own their invariants. The generation and
//! list position carry over when a slot changes kind, so completions already issued
//! still find their tenant.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::http::conn::Conn as HttpConn;
use super::http::shadow::{Job, Shadow};
use super::l4::tcp::Conn as TcpConn;
use super::l4::{BufId, Ctx, Io, Side, Step};
use crate::config::Protocol;
use crate::route::RouteTable;

#[derive(Debug)]
pub enum Slot {
    Tcp(TcpConn),
    Http(Box<HttpConn>),
    Shadow(Box<Shadow>),
}

impl Default for Slot {
    fn default() -> Self {
        Slot::Tcp(TcpConn::default())
    }
}

macro_rules! each {
    ($self:expr, $c:ident => $e:expr) => {
        match $self {
            Slot::Tcp($c) => $e,
            Slot::Http($c) => $e,
            Slot::Shadow($c) => $e,
        }
    };
}

impl Slot {
    #[inline]
    pub fn gen(&self) -> u16 {
        each!(self, c => c.gen)
    }

    #[inline]
    pub fn pos(&self) -> u32 {
        each!(self, c => c.pos)
    }

    #[inline]
    pub fn set_pos(&mut self, p: u32) {
        each!(self, c => c.pos = p)
    }

    #[inline]
    pub fn is_shadow(&self) -> bool {
        matches!(self, Slot::Shadow(_))
    }

    #[inline]
    pub fn is_free(&self) -> bool {
        each!(self, c => c.is_free())
    }

    /// Take a new client socket on listener `listener` of `table`.
    pub fn open(
        &mut self,
        slot: u32,
        fd: OwnedFd,
        table: &Arc<RouteTable>,
        listener: usize,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let http = table.listeners[listener].protocol == Protocol::Http;
        let (gen, pos) = (self.gen(), self.pos());
        match (http, &mut *self) {
            (true, Slot::Http(_)) | (false, Slot::Tcp(_)) => {}
            (true, _) => {
                // The HTTP state is boxed so TCP-only workers keep small slots; a slot
                // keeps its box across tenants, so this allocates once per slot.
                *self = Slot::Http(Box::default());
            }
            (false, _) => *self = Slot::Tcp(TcpConn::default()),
        }
        each!(self, c => { c.gen = gen; c.pos = pos; });
        let step = match self {
            Slot::Tcp(c) => c.open(slot, fd, table, listener, cx, io),
            Slot::Http(c) => c.open(slot, fd, table, listener, cx, io),
            Slot::Shadow(_) => unreachable!("replaced by the match above"),
        };
        self.after(slot, step, cx, io)
    }

    /// Start a mirrored request in this (free) slot.
    pub fn open_shadow(&mut self, slot: u32, job: Job, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let (gen, pos) = (self.gen(), self.pos());
        if !matches!(self, Slot::Shadow(_)) {
            // Once per slot while it keeps this kind (as for HTTP above).
            *self = Slot::Shadow(Box::default());
        }
        let Slot::Shadow(s) = self else {
            unreachable!("just assigned")
        };
        s.gen = gen;
        s.pos = pos;
        s.open(slot, job, cx, io)
    }

    /// Sniffing may have turned an HTTP connection into opaque TCP.
    #[inline]
    fn after(&mut self, slot: u32, step: Step, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let Slot::Http(h) = self else {
            return step;
        };
        let Some(f) = h.take_fallback(cx) else {
            return step;
        };
        let (gen, pos) = (h.gen, h.pos);
        let mut t = TcpConn::default();
        t.gen = gen;
        t.pos = pos;
        *self = Slot::Tcp(t);
        let Slot::Tcp(t) = self else {
            unreachable!("just assigned")
        };
        t.open_fallback(slot, f.fd, f.data, f.tls, &f.table, f.listener, cx, io)
    }

    pub fn on_connect(&mut self, slot: u32, res: i32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        each!(self, c => c.on_connect(slot, res, cx, io))
    }

    pub fn on_recv(
        &mut self,
        slot: u32,
        side: Side,
        res: i32,
        buf: Option<BufId>,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let step = each!(self, c => c.on_recv(slot, side, res, buf, cx, io));
        self.after(slot, step, cx, io)
    }

    pub fn on_send(
        &mut self,
        slot: u32,
        from: Side,
        res: i32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let step = each!(self, c => c.on_send(slot, from, res, cx, io));
        self.after(slot, step, cx, io)
    }

    pub fn on_tick(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        each!(self, c => c.on_tick(slot, cx, io))
    }

    pub fn abort(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        each!(self, c => c.abort(slot, cx, io))
    }

    /// A request waiting for a connection gets its turn (HTTP only).
    pub fn resume_pending(&mut self, slot: u32, seq: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        match self {
            Slot::Http(c) => c.resume_pending(slot, seq, cx, io),
            _ => Step::Continue,
        }
    }

    /// A TLS record job of `side` completed (every kind of slot may carry TLS).
    pub fn on_crypto(&mut self, side: Side, c: &tickmesh_offload::Completion<'_>) -> bool {
        match self {
            Slot::Tcp(t) => t.on_crypto(side, c),
            Slot::Http(h) => h.on_crypto(side, c),
            Slot::Shadow(s) => s.on_crypto(side, c),
        }
        true
    }

    /// After the worker reaped the offload engine: move what completions produced.
    /// (Decrypted bytes may reach an HTTP connection here and send it to the relay.)
    pub fn crypto_done(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let step = match self {
            Slot::Tcp(t) => t.crypto_done(slot, cx, io),
            Slot::Http(h) => h.crypto_done(slot, cx, io),
            Slot::Shadow(s) => s.crypto_done(slot, cx, io),
        };
        self.after(slot, step, cx, io)
    }

    pub fn rearm(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let step = each!(self, c => c.rearm(slot, side, cx, io));
        self.after(slot, step, cx, io)
    }
}
