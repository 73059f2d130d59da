//! UDP forwarding: a session per client address (per worker), each with its own
//! connected upstream socket; datagrams from the client go out on the session's socket,
//! replies come back to the client from the listener socket.
//!
//! Owns the session table and its expiry (`idle_timeout` without a datagram either
//! way). Readiness-driven in both engines: the engine reports "readable" for the
//! listener and session sockets, and this module drains them with `recvfrom`/`send`
//! — one syscall per datagram, a deliberate simplification (io_uring `RecvMsgMulti`
//! would save it; see the engine README notes). Never blocks; datagrams that a full
//! socket buffer refuses are dropped and counted, as UDP allows. Allocates only when a
//! new session is created (the map grows) — never per datagram.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::{Io, Watch};
use crate::cluster::LbState;
use crate::engine::sys;
use crate::route::RouteTable;
use crate::telemetry::{ListenerCounter as L, ListenerStats, UpstreamCounter as U, UpstreamStats};

/// Largest datagram forwarded (the IPv4 UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_535;
/// Datagrams drained per readiness report before yielding to other sockets; the rest
/// are read in the next batch.
const BURST: usize = 256;

#[derive(Debug, Default)]
struct Session {
    gen: u16,
    live: bool,
    /// Listener slot (the worker's local listener index).
    listener: u32,
    client: Option<SocketAddr>,
    up: Option<OwnedFd>,
    last_ms: u64,
    idle_ms: u64,
    pos: u32,
    lstats: Option<Arc<ListenerStats>>,
    cstats: Option<Arc<UpstreamStats>>,
    estats: Option<Arc<UpstreamStats>>,
}

/// A listener as the UDP forwarder sees it: its table entry and its socket.
#[derive(Debug, Clone, Copy)]
pub struct UdpListener {
    pub entry: Option<usize>,
    pub fd: RawFd,
}

/// One worker's UDP sessions.
pub struct Udp {
    sessions: Vec<Session>,
    free: Vec<u32>,
    open_list: Vec<u32>,
    by_client: HashMap<(u32, SocketAddr), u32>,
    scratch: Box<[u8]>,
    /// Indexed by listener slot.
    listeners: Vec<Option<UdpListener>>,
    /// Sockets whose burst ran out before `EAGAIN`: (slot, gen, is_listener), read again
    /// next batch.
    pub again: Vec<(u32, u16, bool)>,
}

impl Default for Udp {
    fn default() -> Self {
        Self::new()
    }
}

impl Udp {
    pub fn new() -> Udp {
        Udp {
            sessions: Vec::new(),
            free: Vec::new(),
            open_list: Vec::new(),
            by_client: HashMap::new(),
            scratch: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            listeners: Vec::new(),
            again: Vec::with_capacity(64),
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.open_list.len()
    }

    /// The worker's listener slots changed (new table).
    pub fn set_listeners(&mut self, l: Vec<Option<UdpListener>>) {
        self.listeners = l;
    }

    /// Datagrams from clients on listener slot `l`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_listener_readable(
        &mut self,
        l: u32,
        table: &RouteTable,
        accepting: bool,
        worker: usize,
        now_ms: u64,
        lb: &mut LbState,
        cursors: &mut [u32],
        io: &mut impl Io,
    ) {
        let Some(Some(ul)) = self.listeners.get(l as usize).copied() else {
            return;
        };
        let Some(entry) = ul.entry else {
            return;
        };
        let le = &table.listeners[entry];
        for i in 0..=BURST {
            if i == BURST {
                self.again.push((l, 0, true));
                break;
            }
            let (n, from) = sys::recv_from(ul.fd, &mut self.scratch);
            if n < 0 {
                if n != -libc::EAGAIN {
                    le.stats.inc(worker, L::Errors);
                }
                break;
            }
            let Some(client) = from else { continue };
            le.stats.inc(worker, L::DatagramsIn);
            le.stats.add(worker, L::BytesFromDownstream, n as u64);
            let s = match self.by_client.get(&(l, client)) {
                Some(&s) => s,
                None if accepting => {
                    match self.create(l, client, table, entry, worker, now_ms, lb, cursors, io) {
                        Some(s) => s,
                        None => {
                            le.stats.inc(worker, L::NoUpstream);
                            continue;
                        }
                    }
                }
                None => continue,
            };
            let sess = &mut self.sessions[s as usize];
            sess.last_ms = now_ms;
            let Some(up) = &sess.up else { continue };
            let r = sys::send(up.as_raw_fd(), &self.scratch[..n as usize]);
            if r >= 0 {
                for st in [&sess.cstats, &sess.estats].into_iter().flatten() {
                    st.add(worker, U::BytesSent, r as u64);
                }
            } else {
                for st in [&sess.cstats, &sess.estats].into_iter().flatten() {
                    st.inc(worker, U::Errors);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        l: u32,
        client: SocketAddr,
        table: &RouteTable,
        entry: usize,
        worker: usize,
        now_ms: u64,
        lb: &mut LbState,
        cursors: &mut [u32],
        io: &mut impl Io,
    ) -> Option<u32> {
        let le = &table.listeners[entry];
        let ci = le.target.as_ref()?.pick(lb.next_u32());
        let cl = &table.clusters[ci];
        let mut scratch = 0;
        let cur = super::cursor(cursors, &mut scratch, ci);
        let n = cl.endpoints.len();
        if n == 0 {
            return None;
        }
        let first = cl.pick(lb, cur, Some(client), 0, worker)?;
        // A socket that cannot be created or connected moves on to the next endpoint.
        let (ep, up) = (0..cl.max_connect_attempts.max(1) as usize).find_map(|a| {
            let ep = (first + a) % n;
            match crate::net::upstream_udp_socket(&cl.endpoints[ep].address) {
                Ok(s) => Some((ep, s)),
                Err(_) => {
                    cl.endpoints[ep].stats.inc(worker, U::ConnectFail);
                    cl.stats.inc(worker, U::ConnectFail);
                    None
                }
            }
        })?;
        let e = &cl.endpoints[ep];
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.sessions.push(Session::default());
                (self.sessions.len() - 1) as u32
            }
        };
        let s = &mut self.sessions[slot as usize];
        let gen = s.gen;
        io.watch(Watch::Session(slot, gen), up.as_raw_fd());
        *s = Session {
            gen,
            live: true,
            listener: l,
            client: Some(client),
            up: Some(up),
            last_ms: now_ms,
            idle_ms: le.idle_timeout.as_millis() as u64,
            pos: self.open_list.len() as u32,
            lstats: Some(le.stats.clone()),
            cstats: Some(cl.stats.clone()),
            estats: Some(e.stats.clone()),
        };
        self.open_list.push(slot);
        self.by_client.insert((l, client), slot);
        le.stats.inc(worker, L::UdpSessionsTotal);
        le.stats.inc(worker, L::CxTotal);
        e.stats.inc(worker, U::CxTotal);
        cl.stats.inc(worker, U::CxTotal);
        Some(slot)
    }

    /// Replies from a session's upstream go back to its client.
    pub fn on_session_readable(&mut self, slot: u32, gen: u16, worker: usize, now_ms: u64) {
        let Some(s) = self.sessions.get_mut(slot as usize) else {
            return;
        };
        if !s.live || s.gen != gen {
            return;
        }
        let Some(Some(ul)) = self.listeners.get(s.listener as usize).copied() else {
            return;
        };
        let (Some(up), Some(client)) = (&s.up, s.client) else {
            return;
        };
        for i in 0..=BURST {
            if i == BURST {
                self.again.push((slot, gen, false));
                break;
            }
            let n = sys::recv(up.as_raw_fd(), &mut self.scratch);
            if n < 0 {
                if n != -libc::EAGAIN {
                    // ECONNREFUSED from an ICMP port unreachable: the endpoint is down.
                    for st in [&s.cstats, &s.estats].into_iter().flatten() {
                        st.inc(worker, U::Errors);
                    }
                }
                break;
            }
            s.last_ms = now_ms;
            for st in [&s.cstats, &s.estats].into_iter().flatten() {
                st.add(worker, U::BytesReceived, n as u64);
            }
            let r = sys::send_to(ul.fd, &self.scratch[..n as usize], &client);
            if let Some(ls) = &s.lstats {
                if r >= 0 {
                    ls.inc(worker, L::DatagramsOut);
                    ls.add(worker, L::BytesToDownstream, r as u64);
                } else {
                    ls.inc(worker, L::Errors);
                }
            }
        }
    }

    /// A session's readiness watch ended unexpectedly: watch again.
    pub fn rewatch(&mut self, slot: u32, gen: u16, io: &mut impl Io) {
        if let Some(s) = self.sessions.get(slot as usize) {
            if s.live && s.gen == gen {
                if let Some(up) = &s.up {
                    io.watch(Watch::Session(slot, gen), up.as_raw_fd());
                }
            }
        }
    }

    fn close(&mut self, slot: u32, worker: usize, io: &mut impl Io) {
        let s = &mut self.sessions[slot as usize];
        if !s.live {
            return;
        }
        if let Some(up) = s.up.take() {
            io.unwatch(Watch::Session(slot, s.gen), up.as_raw_fd());
        }
        if let Some(c) = s.client.take() {
            self.by_client.remove(&(s.listener, c));
        }
        if let Some(ls) = s.lstats.take() {
            ls.inc(worker, L::CxClosed);
        }
        for st in [s.cstats.take(), s.estats.take()].into_iter().flatten() {
            st.inc(worker, U::CxClosed);
        }
        s.live = false;
        s.gen = s.gen.wrapping_add(1);
        let pos = s.pos as usize;
        self.open_list.swap_remove(pos);
        if let Some(&moved) = self.open_list.get(pos) {
            self.sessions[moved as usize].pos = pos as u32;
        }
        self.free.push(slot);
    }

    /// Expire sessions idle for their listener's `idle_timeout`.
    pub fn expire(&mut self, now_ms: u64, worker: usize, io: &mut impl Io) {
        let mut i = 0;
        while i < self.open_list.len() {
            let slot = self.open_list[i];
            let s = &self.sessions[slot as usize];
            if now_ms.saturating_sub(s.last_ms) >= s.idle_ms {
                if let Some(ls) = &s.lstats {
                    ls.inc(worker, L::UdpSessionsExpired);
                }
                self.close(slot, worker, io);
            } else {
                i += 1;
            }
        }
    }

    /// Close the sessions of listener slot `l` (it left the table).
    pub fn close_listener(&mut self, l: u32, worker: usize, io: &mut impl Io) {
        let mut i = 0;
        while i < self.open_list.len() {
            let slot = self.open_list[i];
            if self.sessions[slot as usize].listener == l {
                self.close(slot, worker, io);
            } else {
                i += 1;
            }
        }
    }

    pub fn close_all(&mut self, worker: usize, io: &mut impl Io) {
        while let Some(&slot) = self.open_list.last() {
            self.close(slot, worker, io);
        }
    }
}
