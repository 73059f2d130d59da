//! The epoll engine: the same proxy for hosts where io_uring is unavailable (containers
//! often block `io_uring_setup`). Edge-triggered epoll, one registration per socket for
//! its whole life; the engine turns readiness into the completions the proxy state
//! machine expects by running `recv`/`send`/`accept4` itself.
//!
//! Owns the epoll set, the buffer pool and its free list, and per connection the
//! operations the proxy asked for plus each socket's last known readiness. Invariants:
//! an operation runs only when its socket is believed ready, and readiness is cleared
//! only by `EAGAIN` or by a short read with no FIN/hang-up reported (edge-triggered: data
//! arriving later raises a new edge, so no event is lost); a completion is delivered after
//! the call that requested it has returned (never re-entrantly); each registration
//! carries an epoch so an event for a socket closed earlier in the batch is ignored.
//!
//! A pooled upstream socket stays registered while it idles in the worker's pool
//! ([`Io::park`]): a read-side event on it from then on (bytes, FIN, hang-up, error)
//! marks it dead, with no syscall, and the worker's tick closes it ([`Io::parked_alive`]);
//! one parked with a session ([`Io::park_session`]: a TLS upstream on the offload engine)
//! has its bytes read and handed to the worker (`Core::on_parked_bytes`: a late ticket or
//! KeyUpdate keeps it), only an end of stream, hang-up or error kill it.
//! Its registration still carries the token of the connection that parked it; a parked
//! socket is known by descriptor number and that token together, so a reused number
//! (re-registered under another token) is never taken for it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::buf::{BufPool, BUF_SIZE, POOL_BUFFERS};
use super::core::{Core, Driver, Kind, Token, TICK_MS};
use super::sys;
use super::{EngineOptions, Idle};
use crate::proxy::l4::{BufId, ConnRef, Io, Side, Slice, Watch};

const EVENTS: usize = 512;
/// Empty spinning laps between two runs of the batch bookkeeping (see `run`).
const QUIET_LAPS: u32 = 32;

/// One connection's requested operations and its sockets' readiness.
#[derive(Debug, Clone, Copy, Default)]
struct Ops {
    gen: u16,
    fds: [RawFd; 2],
    epoch: [u8; 2],
    readable: [bool; 2],
    writable: [bool; 2],
    /// An event reported the peer's FIN, a hang-up or an error: a short read no longer
    /// proves the socket drained (the close is read by the next receive).
    hup: [bool; 2],
    want_recv: [bool; 2],
    /// By source side: (buffer, offset, length) to write to the other side.
    send: [Option<(BufId, u32, u32)>; 2],
    connecting: bool,
    queued: bool,
}

/// What the engine knows of a socket idling in the worker's pool, by descriptor number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Park {
    /// Not parked (or not watched while parked).
    #[default]
    No,
    /// Parked; nothing arrived since.
    Alive,
    /// Parked, and bytes, an end of stream or an error arrived: never to be reused.
    Dead,
    /// Parked with a session that may hear from its peer while idle
    /// ([`Io::park_session`]): bytes are read and handed to the worker; an end of
    /// stream, a hang-up or an error still make it `Dead`.
    Session,
}

#[derive(Debug, Clone, Copy)]
enum Done {
    Connect(ConnRef, i32),
    Recv(ConnRef, Side, i32, Option<BufId>),
    Send(ConnRef, Side, i32),
}

pub(crate) struct Epoll {
    ep: OwnedFd,
    pool: BufPool,
    free: Vec<BufId>,
    /// Write buffers not held by a proxy.
    write_free: Vec<BufId>,
    ops: Vec<Ops>,
    /// By slot and source side: a second slice gathered behind `Ops::send`'s in the
    /// same `sendmsg` (kept apart so `Ops` stays small).
    second: Vec<[Option<Slice>; 2]>,
    /// The token each socket was last registered with, by descriptor number (so a
    /// pooled socket taken back by the slot that registered it costs no syscall).
    tokens: Vec<u64>,
    /// By descriptor number: whether the socket is parked and alive (see [`Park`]),
    /// and its index in `parked_fds`.
    parks: Vec<(Park, u32)>,
    /// The parked sockets, unordered: searched (by registration token) only for an
    /// event whose token no longer names its connection's socket (rare: a socket whose
    /// parking connection moved on, or one closed earlier in the batch).
    parked_fds: Vec<RawFd>,
    /// `Session` sockets with bytes to read (handed to the worker after the events).
    parked_bytes: Vec<RawFd>,
    ready: Vec<u32>,
    done: Vec<Done>,
}

fn sock_token(c: ConnRef, side: Side, epoch: u8) -> u64 {
    Token::encode(Kind::Sock, side as u8 | (epoch << 1), c.gen, c.slot)
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let ep = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll {
            ep,
            pool: BufPool::new(),
            free: (0..POOL_BUFFERS as BufId).rev().collect(),
            write_free: BufPool::write_ids().collect(),
            ops: Vec::new(),
            second: Vec::new(),
            tokens: Vec::new(),
            parks: Vec::new(),
            parked_fds: Vec::new(),
            parked_bytes: Vec::new(),
            ready: Vec::with_capacity(4096),
            done: Vec::with_capacity(4096),
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is valid for the call; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn register_sock(&mut self, c: ConnRef, side: Side, fd: RawFd) -> io::Result<()> {
        self.register_as(c, side, fd, libc::EPOLL_CTL_ADD)
    }

    /// Register `fd` (ADD) or move its registration (MOD) to `c`'s `side`, under a new
    /// epoch so events of its previous owner are ignored.
    fn register_as(&mut self, c: ConnRef, side: Side, fd: RawFd, op: i32) -> io::Result<()> {
        let o = &mut self.ops[c.slot as usize];
        o.epoch[side.idx()] = o.epoch[side.idx()].wrapping_add(1) & 0x7f;
        let tok = sock_token(c, side, o.epoch[side.idx()]);
        let ev = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        self.ctl(op, fd, ev, tok)?;
        if fd >= 0 {
            let i = fd as usize;
            if self.tokens.len() <= i {
                // Grows with the highest descriptor number only.
                self.tokens.resize(i + 1, 0);
            }
            self.tokens[i] = tok;
            // A fresh registration: whatever was parked under this number is gone.
            self.unpark(fd);
        }
        Ok(())
    }

    /// Start watching parked socket `fd` (registered, so `tokens` names it).
    fn park_fd(&mut self, fd: RawFd) {
        let i = fd as usize;
        if self.parks.len() <= i {
            // Grows with the highest descriptor number only.
            self.parks.resize(i + 1, (Park::No, 0));
        }
        self.parks[i] = (Park::Alive, self.parked_fds.len() as u32);
        // Grows with the pool's high-water mark only.
        self.parked_fds.push(fd);
    }

    /// Stop watching `fd` as a parked socket (taken, closed, or re-registered).
    fn unpark(&mut self, fd: RawFd) {
        let Some(&(state, at)) = self.parks.get(fd as usize) else {
            return;
        };
        if state == Park::No {
            return;
        }
        self.parks[fd as usize] = (Park::No, 0);
        self.parked_fds.swap_remove(at as usize);
        if let Some(&moved) = self.parked_fds.get(at as usize) {
            self.parks[moved as usize].1 = at;
        }
    }

    /// A read-side event (`bits`: bytes, FIN, hang-up, error) under registration
    /// `token`: if it is a parked socket's, that socket is dead — unless it is parked
    /// with a session and only bytes arrived: they are read for the worker after the
    /// events ([`drain_parked`]).
    fn note_parked(&mut self, token: u64, t: Token, bits: u32) {
        let (side, epoch) = ((t.aux & 1) as usize, t.aux >> 1);
        let named = self
            .ops
            .get(t.slot as usize)
            .filter(|o| o.gen == t.gen && o.epoch[side] == epoch)
            .map(|o| o.fds[side])
            .filter(|&fd| fd >= 0 && self.tokens.get(fd as usize) == Some(&token));
        let fd = match named {
            // The connection's own socket (parked or not): no search.
            Some(fd) => fd,
            None => {
                let tokens = &self.tokens;
                match self
                    .parked_fds
                    .iter()
                    .copied()
                    .find(|&fd| tokens.get(fd as usize) == Some(&token))
                {
                    Some(fd) => fd,
                    None => return,
                }
            }
        };
        let ends = (libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if let Some(p) = self.parks.get_mut(fd as usize) {
            match p.0 {
                Park::Alive => p.0 = Park::Dead,
                Park::Session if bits & ends != 0 => p.0 = Park::Dead,
                Park::Session => {
                    if !self.parked_bytes.contains(&fd) {
                        // Bounded by the parked sockets (grows to their high-water mark).
                        self.parked_bytes.push(fd);
                    }
                }
                Park::No | Park::Dead => {}
            }
        }
    }

    #[inline]
    fn enqueue(&mut self, slot: u32) {
        let o = &mut self.ops[slot as usize];
        if !o.queued {
            o.queued = true;
            self.ready.push(slot);
        }
    }

    /// A readiness event for a connection's socket (or a parked one).
    fn sock_event(&mut self, bits: u32, token: u64, t: Token) {
        let read_side = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if !self.parked_fds.is_empty() && bits & read_side != 0 {
            // Something arrived: on a parked socket it marks it dead (the tick closes
            // it). A pure EPOLLOUT edge (acknowledged bytes freeing send space)
            // changes nothing for it.
            self.note_parked(token, t, bits);
        }
        let side = (t.aux & 1) as usize;
        let epoch = t.aux >> 1;
        let Some(o) = self.ops.get_mut(t.slot as usize) else {
            return;
        };
        if o.gen != t.gen || o.epoch[side] != epoch {
            return;
        }
        let err = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if bits & ((libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | err) != 0 {
            o.readable[side] = true;
        }
        if bits & (libc::EPOLLRDHUP as u32 | err) != 0 {
            o.hup[side] = true;
        }
        if bits & (libc::EPOLLOUT as u32 | err) != 0 {
            o.writable[side] = true;
        }
        self.enqueue(t.slot);
    }

    /// Run the operations a connection asked for that its sockets are ready for.
    fn service(&mut self, slot: u32) {
        let o = &mut self.ops[slot as usize];
        o.queued = false;
        let c = ConnRef { slot, gen: o.gen };
        let up = Side::Up.idx();
        if o.connecting && o.writable[up] {
            o.connecting = false;
            let err = match crate::net::take_error(&sys_fd(o.fds[up])) {
                Ok(None) => 0,
                Ok(Some(e)) => -e.raw_os_error().unwrap_or(libc::ECONNREFUSED),
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            };
            self.done.push(Done::Connect(c, err));
        }
        for side in [Side::Down, Side::Up] {
            let s = side.idx();
            let o = &mut self.ops[slot as usize];
            if o.want_recv[s] && o.readable[s] {
                let Some(b) = self.free.pop() else {
                    o.want_recv[s] = false;
                    self.done.push(Done::Recv(c, side, -libc::ENOBUFS, None));
                    continue;
                };
                // SAFETY: b came off the free list: nothing else refers to it.
                let n = sys::recv(o.fds[s], unsafe { self.pool.slice_mut(b) });
                if n == -libc::EAGAIN {
                    self.free.push(b);
                    o.readable[s] = false;
                } else {
                    o.want_recv[s] = false;
                    if n > 0 {
                        if (n as usize) < BUF_SIZE && !o.hup[s] {
                            // A short read drained the socket: the next receive waits
                            // for its readiness event instead of paying a syscall that
                            // returns EAGAIN (data arriving after this read raises a
                            // new edge; HAProxy's raw_sock_to_buf does the same).
                            o.readable[s] = false;
                        }
                        self.done.push(Done::Recv(c, side, n, Some(b)));
                    } else {
                        self.free.push(b);
                        self.done.push(Done::Recv(c, side, n, None));
                    }
                }
            }
            let dst = side.other().idx();
            if let Some((b, off, len)) = o.send[s] {
                if o.writable[dst] {
                    // SAFETY: the buffer belongs to this connection's queue until the
                    // send completes; off + len ≤ BUF_SIZE.
                    let data = unsafe { &self.pool.slice(b)[off as usize..(off + len) as usize] };
                    let second = self.second.get(slot as usize).and_then(|x| x[s]);
                    let n = match second {
                        Some((b2, off2, len2)) => {
                            // SAFETY: as above, for the second slice.
                            let more = unsafe {
                                &self.pool.slice(b2)[off2 as usize..(off2 + len2) as usize]
                            };
                            sys::send2(o.fds[dst], data, more)
                        }
                        None => sys::send(o.fds[dst], data),
                    };
                    if n == -libc::EAGAIN {
                        o.writable[dst] = false;
                    } else {
                        o.send[s] = None;
                        if let Some(x) = self.second.get_mut(slot as usize) {
                            x[s] = None;
                        }
                        self.done.push(Done::Send(c, side, n));
                    }
                }
            }
        }
    }
}

/// A borrowed view of a raw fd for socket2 helpers.
fn sys_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass a socket owned by a live connection; the borrow is used only
    // within the current call (never stored), while the connection keeps it open.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

impl Io for Epoll {
    fn adopt(&mut self, c: ConnRef, fd: RawFd) {
        let slot = c.slot as usize;
        if self.ops.len() <= slot {
            // Grows with the slab's high-water mark only.
            self.ops.resize(slot + 1, Ops::default());
        }
        let epoch = self.ops[slot].epoch;
        self.ops[slot] = Ops {
            gen: c.gen,
            fds: [fd, -1],
            epoch,
            // Optimistic: edge-triggered readiness is learned from EAGAIN.
            readable: [true, false],
            writable: [true, false],
            ..Ops::default()
        };
        if fd < 0 {
            // A slot without a client socket (a mirrored request): registered only.
            self.ops[slot].readable[0] = false;
            self.ops[slot].writable[0] = false;
            return;
        }
        if let Err(e) = self.register_sock(c, Side::Down, fd) {
            tracing::warn!("epoll_ctl(ADD) for a client socket failed: {e}");
            self.ops[slot].readable[0] = false;
        }
    }

    fn connect(&mut self, c: ConnRef, fd: RawFd, addr: SocketAddr) {
        let (ss, len) = sys::to_storage(&addr);
        // SAFETY: ss holds a sockaddr of `len` bytes; fd is a non-blocking socket.
        let r = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
        let err = if r == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        };
        let o = &mut self.ops[c.slot as usize];
        o.fds[Side::Up.idx()] = fd;
        o.readable[Side::Up.idx()] = false;
        o.writable[Side::Up.idx()] = false;
        o.hup[Side::Up.idx()] = false;
        if err != 0 && err != libc::EINPROGRESS {
            self.done.push(Done::Connect(c, -err));
            return;
        }
        if let Err(e) = self.register_sock(c, Side::Up, fd) {
            self.done
                .push(Done::Connect(c, -e.raw_os_error().unwrap_or(libc::EIO)));
            return;
        }
        let o = &mut self.ops[c.slot as usize];
        o.connecting = true;
        if err == 0 {
            o.writable[Side::Up.idx()] = true;
            self.enqueue(c.slot);
        }
    }

    fn attach(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        debug_assert!(
            self.parks
                .get(fd as usize)
                .is_none_or(|p| p.0 != Park::Dead),
            "a dead parked socket was handed out"
        );
        self.unpark(fd);
        let s = side.idx();
        let o = &self.ops[c.slot as usize];
        let current = sock_token(c, side, o.epoch[s]);
        if o.fds[s] == fd && self.tokens.get(fd as usize) == Some(&current) {
            // Still registered for this slot and side: its readiness is up to date.
            return;
        }
        // Another slot's (or an older epoch's) socket: one epoll_ctl to move it.
        let o = &mut self.ops[c.slot as usize];
        o.fds[s] = fd;
        // Optimistic, as for a new socket: EAGAIN teaches the truth.
        o.readable[s] = true;
        o.writable[s] = true;
        o.hup[s] = false;
        o.connecting = false;
        if let Err(e) = self.register_as(c, side, fd, libc::EPOLL_CTL_MOD) {
            tracing::warn!("epoll_ctl(MOD) for a pooled upstream socket failed: {e}");
        }
    }

    fn park(&mut self, c: ConnRef, side: Side, fd: RawFd) -> bool {
        self.unpark(fd);
        let s = side.idx();
        let Some(o) = self.ops.get_mut(c.slot as usize) else {
            return true;
        };
        let own = o.gen == c.gen
            && o.fds[s] == fd
            && fd >= 0
            && self.tokens.get(fd as usize) == Some(&sock_token(c, side, o.epoch[s]));
        if !own {
            // Not registered under `c` (never expected): hand it over unwatched (the
            // pool's own check applies).
            return true;
        }
        if o.hup[s] || o.want_recv[s] {
            // An end of stream already reported, or a receive still asked: not reusable.
            return false;
        }
        if o.readable[s] {
            // Readiness not disproved since the last read (it filled the buffer, or an
            // event arrived after it): one peek settles whether bytes nobody asked
            // for wait. Rare: the last read of a response is short and clears it.
            let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            match socket2::SockRef::from(&sys_fd(fd)).peek(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => o.readable[s] = false,
                _ => return false,
            }
        }
        self.park_fd(fd);
        true
    }

    fn park_session(&mut self, c: ConnRef, side: Side, fd: RawFd) -> bool {
        if !self.park(c, side, fd) {
            return false;
        }
        if let Some(p) = self.parks.get_mut(fd as usize) {
            if p.0 == Park::Alive {
                p.0 = Park::Session;
            }
        }
        true
    }

    fn parked_alive(&self, fd: RawFd) -> Option<bool> {
        match self.parks.get(fd as usize).map(|p| p.0) {
            Some(Park::Alive | Park::Session) => Some(true),
            Some(Park::Dead) => Some(false),
            _ => None,
        }
    }

    fn drop_socket(&mut self, fd: RawFd) {
        if fd >= 0 {
            self.unpark(fd);
        }
    }

    fn cancel_connect(&mut self, c: ConnRef, _fd: RawFd) -> bool {
        self.ops[c.slot as usize].connecting = false;
        true
    }

    #[inline]
    fn recv(&mut self, c: ConnRef, side: Side, _fd: RawFd) {
        self.ops[c.slot as usize].want_recv[side.idx()] = true;
        self.enqueue(c.slot);
    }

    #[inline]
    fn send(&mut self, c: ConnRef, from: Side, _fd: RawFd, buf: BufId, off: u32, len: u32) {
        self.ops[c.slot as usize].send[from.idx()] = Some((buf, off, len));
        if let Some(x) = self.second.get_mut(c.slot as usize) {
            x[from.idx()] = None;
        }
        self.enqueue(c.slot);
    }

    #[inline]
    fn sendv(&mut self, c: ConnRef, from: Side, _fd: RawFd, first: Slice, second: Slice) {
        let slot = c.slot as usize;
        self.ops[slot].send[from.idx()] = Some(first);
        if self.second.len() <= slot {
            // Grows with the slab's high-water mark only.
            self.second.resize(slot + 1, [None; 2]);
        }
        self.second[slot][from.idx()] = Some(second);
        self.enqueue(c.slot);
    }

    #[inline]
    fn release(&mut self, buf: BufId) {
        if BufPool::is_write(buf) {
            self.write_free.push(buf);
        } else {
            self.free.push(buf);
        }
    }

    #[inline]
    fn take(&mut self) -> Option<BufId> {
        self.write_free.pop()
    }

    #[inline]
    fn bytes(&self, buf: BufId) -> &[u8] {
        // SAFETY: this engine reads into a buffer only inside `service`, into one it
        // just took off the free list; a buffer the proxy holds is on no list.
        unsafe { self.pool.slice(buf) }
    }

    #[inline]
    fn bytes_mut(&mut self, buf: BufId) -> &mut [u8] {
        // SAFETY: as in `bytes`; the proxy never writes a buffer while sending it.
        unsafe { self.pool.slice_mut(buf) }
    }

    #[inline]
    fn buffers_available(&self) -> bool {
        !self.free.is_empty()
    }

    fn cancel_all(&mut self, c: ConnRef, fds: [RawFd; 2]) -> bool {
        // Closing the sockets removes them from the epoll set; pending requests are ours.
        // Only the sides named (`-1` = keep): an HTTP connection may cancel its upstream
        // socket's operations alone.
        let o = &mut self.ops[c.slot as usize];
        for side in [Side::Down, Side::Up] {
            if fds[side.idx()] >= 0 {
                o.want_recv[side.idx()] = false;
                // The send that writes to this side.
                o.send[side.other().idx()] = None;
                if let Some(x) = self.second.get_mut(c.slot as usize) {
                    x[side.other().idx()] = None;
                }
            }
        }
        if fds[Side::Up.idx()] >= 0 {
            o.connecting = false;
        }
        // Results already produced but not yet delivered are cancelled too: the caller
        // goes on as if none will come (an HTTP retry reuses its queues at once).
        let (free, done) = (&mut self.free, &mut self.done);
        done.retain(|d| {
            let (dc, side) = match *d {
                Done::Connect(dc, _) => (dc, Side::Up),
                Done::Recv(dc, side, _, _) => (dc, side),
                Done::Send(dc, from, _) => (dc, from.other()),
            };
            let cancelled = dc == c && fds[side.idx()] >= 0;
            if cancelled {
                if let Done::Recv(_, _, _, Some(b)) = *d {
                    free.push(b);
                }
            }
            !cancelled
        });
        true
    }

    fn watch(&mut self, w: Watch, fd: RawFd) {
        let tok = watch_token(w);
        let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, fd, ev, tok) {
            tracing::warn!("epoll_ctl(ADD) for a UDP socket failed: {e}");
        }
    }

    fn unwatch(&mut self, _w: Watch, fd: RawFd) {
        // ENOENT/EBADF if already closed: nothing left to remove.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }
}

fn watch_token(w: Watch) -> u64 {
    match w {
        Watch::Listener(l) => Token::encode(Kind::UdpListener, 0, 0, l),
        Watch::Session(s, g) => Token::encode(Kind::UdpSession, 0, g, s),
    }
}

impl Driver for Epoll {
    fn arm_accept(&mut self, l: u32, fd: RawFd) {
        let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
        if let Err(e) = self.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            ev,
            Token::encode(Kind::Accept, 0, 0, l),
        ) {
            tracing::warn!("epoll_ctl(ADD) for a listener failed: {e}");
        }
    }

    fn disarm_accept(&mut self, _l: u32, fd: RawFd) -> bool {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
        true
    }
}

/// Deliver completions until no connection has runnable work.
fn flush(core: &mut Core, io: &mut Epoll) {
    loop {
        while let Some(d) = io.done.pop() {
            match d {
                Done::Connect(c, res) => core.on_connect(c.slot, c.gen, res, io),
                Done::Recv(c, side, res, buf) => core.on_recv(c.slot, c.gen, side, res, buf, io),
                Done::Send(c, from, res) => core.on_send(c.slot, c.gen, from, res, io),
            }
        }
        let Some(slot) = io.ready.pop() else {
            return;
        };
        io.service(slot);
    }
}

fn accept_all(core: &mut Core, io: &mut Epoll, l: u32) {
    let Some(fd) = core
        .listeners
        .get(l as usize)
        .and_then(Option::as_ref)
        .map(|x| x.fd(core.worker))
    else {
        return;
    };
    loop {
        // SAFETY: null address pointers are allowed (we don't ask for the peer).
        let r = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        let res = if r < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            r
        };
        if res < 0 && res != -libc::ECONNABORTED && res != -libc::EINTR {
            // EAGAIN: drained. EMFILE/ENFILE/ENOBUFS: the connection stays queued in the
            // kernel; the next readiness event (or a later batch) retries.
            return;
        }
        core.on_accept(l, res, true, io);
        flush(core, io);
        // The listener may have been disarmed by the accept (table change).
        if !core
            .listeners
            .get(l as usize)
            .and_then(Option::as_ref)
            .is_some_and(|x| x.armed)
        {
            return;
        }
    }
}

/// Run one worker until the engine stops it.
pub(crate) fn run(core: &mut Core, io: &mut Epoll, opts: &EngineOptions) -> io::Result<()> {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut last_work = Instant::now();
    let mut stop_deadline: Option<Instant> = None;
    let mut quiet_laps = 0u32;
    loop {
        let timeout = if !io.ready.is_empty() || !io.done.is_empty() || core.crypto_busy() {
            0
        } else {
            match opts.idle {
                Idle::Spin => 0,
                Idle::Adaptive if last_work.elapsed() < opts.spin => 0,
                _ => TICK_MS as i32,
            }
        };
        // SAFETY: `events` is valid for EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                io.ep.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                timeout,
            )
        };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        if timeout != 0 {
            // Asleep in the kernel is not busy.
            core.busy.woke();
        }
        // A spinning lap that found nothing skips the batch bookkeeping (the clock read,
        // the table load), as the uring loop does: it is most of a spinning worker's
        // time and delays noticing the next event. Every QUIET_LAPS-th empty lap still
        // runs it, so timers, table swaps and stop wait a few microseconds at most.
        let nothing = io.ready.is_empty() && io.done.is_empty() && !core.crypto_busy();
        if n == 0 && timeout == 0 && nothing && quiet_laps < QUIET_LAPS {
            quiet_laps += 1;
            core.busy.lap(false, 0);
            continue;
        }
        quiet_laps = 0;
        if n > 0 && opts.idle == Idle::Adaptive {
            last_work = Instant::now();
        }
        // After the wait: what it returned is handled with the newest table.
        core.begin_batch(io);
        flush(core, io);
        if core.stopping() {
            let now = Instant::now();
            let deadline = *stop_deadline.get_or_insert_with(|| {
                core.abort_all(io);
                now + Duration::from_secs(2)
            });
            flush(core, io);
            if core.idle() || now >= deadline {
                return Ok(());
            }
        }
        for ev in &events[..n] {
            let (bits, token) = (ev.events, ev.u64);
            let t = Token::decode(token);
            match t.kind {
                Kind::Accept => accept_all(core, io, t.slot),
                Kind::Sock => io.sock_event(bits, token, t),
                Kind::UdpListener => core.on_udp_ready(Watch::Listener(t.slot), true, io),
                Kind::UdpSession => core.on_udp_ready(Watch::Session(t.slot, t.gen), true, io),
                _ => {}
            }
        }
        if !io.parked_bytes.is_empty() {
            drain_parked(core, io);
        }
        flush(core, io);
        core.poll_crypto(io);
        flush(core, io);
        core.end_batch();
        // The whole turn, its epoll_wait and the recv/send it made, when it had work.
        core.busy.lap(n > 0 || !nothing, n);
    }
}

/// Read what arrived on sockets parked with a session and hand it to the worker
/// (`Core::on_parked_bytes`), which keeps or closes each. Off the request path: only
/// when a parked connection's peer speaks (a late ticket, a KeyUpdate).
fn drain_parked(core: &mut Core, io: &mut Epoll) {
    while let Some(fd) = io.parked_bytes.pop() {
        // A few reads at most: a session's peer has little to say while it idles.
        for _ in 0..4 {
            if io.parks.get(fd as usize).map(|p| p.0) != Some(Park::Session) {
                break; // closed, taken or dead meanwhile
            }
            let Some(b) = io.free.pop() else {
                io.parks[fd as usize].0 = Park::Dead;
                break;
            };
            // SAFETY: b came off the free list: nothing else refers to it.
            let n = sys::recv(fd, unsafe { io.pool.slice_mut(b) });
            if n <= 0 {
                io.free.push(b);
                if n != -libc::EAGAIN {
                    io.parks[fd as usize].0 = Park::Dead;
                }
                break;
            }
            core.on_parked_bytes(fd, b, n as u32, io);
            if (n as usize) < BUF_SIZE {
                break; // drained (a new edge reports more)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoll engine's per-connection bookkeeping, beside the proxy's `Conn`.
    #[test]
    fn per_connection_ops_stay_small() {
        let size = std::mem::size_of::<Ops>();
        assert!(size <= 56, "epoll Ops grew to {size} bytes");
    }

    /// Events waiting on the engine's epoll set, handled as `run` handles sockets'.
    fn pump(e: &mut Epoll) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: `events` is valid for 16 entries.
        let n = unsafe { libc::epoll_wait(e.ep.as_raw_fd(), events.as_mut_ptr(), 16, 200) };
        for ev in &events[..n.max(0) as usize] {
            let (bits, token) = (ev.events, ev.u64);
            e.sock_event(bits, token, Token::decode(token));
        }
    }

    /// Parked sockets: a read-side event marks one dead (also under a token its
    /// parking connection no longer names), the others stay alive; taking, dropping
    /// and re-registering keep the bookkeeping consistent; bytes already waiting at
    /// park time refuse the park.
    #[test]
    fn parked_sockets_die_on_events() {
        use std::io::Write;
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let pair = || {
            let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            ours.set_nonblocking(true).unwrap();
            (ours, l.accept().unwrap().0)
        };
        let mut e = Epoll::new().unwrap();
        let (a, mut pa) = pair();
        let (b, _pb) = pair();
        let (c, mut pc) = pair();
        let (fa, fb, fc) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
        let (ca, cb, cc) = (
            ConnRef { slot: 0, gen: 1 },
            ConnRef { slot: 1, gen: 1 },
            ConnRef { slot: 2, gen: 1 },
        );
        e.adopt(ca, fa);
        e.adopt(cb, fb);
        e.adopt(cc, fc);
        pump(&mut e);
        // Bytes nobody asked for wait on c: refused.
        pc.write_all(b"stray").unwrap();
        pump(&mut e);
        assert!(!e.park(cc, Side::Down, fc));
        assert_eq!(e.parked_alive(fc), None);
        assert!(e.park(ca, Side::Down, fa));
        assert!(e.park(cb, Side::Down, fb));
        assert_eq!(
            (e.parked_alive(fa), e.parked_alive(fb)),
            (Some(true), Some(true))
        );
        // a's connection moves on (a new generation in its slot): the event on a
        // carries a token nobody names any more, and still finds it.
        e.adopt(ConnRef { slot: 0, gen: 2 }, -1);
        pa.write_all(b"x").unwrap();
        pump(&mut e);
        assert_eq!(
            (e.parked_alive(fa), e.parked_alive(fb)),
            (Some(false), Some(true))
        );
        e.drop_socket(fa);
        assert_eq!((e.parked_alive(fa), e.parked_alive(fb)), (None, Some(true)));
        // Taken back by its own connection: no longer watched as parked.
        e.attach(cb, Side::Down, fb);
        assert_eq!(e.parked_alive(fb), None);
        assert!(e.parked_fds.is_empty());
        // Parked again, then its number registered afresh (as a closed descriptor's
        // reused number is: the close took it out of the set).
        assert!(e.park(cb, Side::Down, fb));
        e.ctl(libc::EPOLL_CTL_DEL, fb, 0, 0).unwrap();
        e.adopt(ConnRef { slot: 3, gen: 1 }, fb);
        assert_eq!(e.parked_alive(fb), None);
        assert!(e.parked_fds.is_empty());
    }
}
