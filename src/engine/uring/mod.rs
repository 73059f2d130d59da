//! The io_uring engine: one ring per worker, set up `SINGLE_ISSUER | DEFER_TASKRUN`
//! (PLATFORM.md: default flags cost ≈ 20 µs more per round trip; SQPOLL is not used —
//! it needs a core of its own). Multishot accept per listener socket; receives pick a
//! buffer from the worker's provided-buffer ring — multishot on sockets a connection
//! keeps across messages ([`Io::recv_multi`]: armed once, not once per message — the
//! client socket, both L4 sides, a plain-TCP HTTP upstream, whose receive stays armed
//! while the socket idles in the worker's pool: [`Io::park`]), single-shot elsewhere; sends
//! go straight from the buffer (no copy); all submitted in one `io_uring_enter` per loop.
//!
//! Owns the ring, the buffer ring, the connect addresses and the multishot receive
//! state; the proxy logic lives in `proxy::l4` and the worker logic in `engine::core`.
//! Multishot state is kept per socket (by fd number, with a generation per number so a
//! late completion of a closed socket never lands on its successor), not per connection:
//! a pooled upstream socket carries its armed receive from the connection that parked it
//! to the one that takes it. Whatever completes on a parked socket (bytes, end of stream,
//! error) marks it dead; the pool asks before reuse ([`Io::parked_alive`]), and nobody
//! ever receives those bytes — except on a socket parked with a session
//! ([`Io::park_session`]: a TLS upstream on the offload engine), whose bytes go to the
//! worker at once (`Core::on_parked_bytes`: a late ticket or KeyUpdate keeps it). Invariants: a buffer is either in the kernel's ring, held here for a connection that
//! has not asked for it yet, or owned by exactly one connection's queue; memory the
//! kernel may touch (buffers, buffer ring, sockaddrs) lives until the ring is dropped,
//! which happens first (field order). The proxy sees one receive completion per ask,
//! single-shot or multishot alike, so a connection's queue stays bounded; a multishot
//! receive that completes while its connection has not asked is held, and the first such
//! completion cancels it (backpressure: a connection holds at most its queue plus the
//! few completions the kernel posted before the cancel took effect; the pool bound holds
//! regardless, since every held completion owns a pool buffer or ends the multishot).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::buf::{BufPool, BUF_SIZE, POOL_BUFFERS};
use super::core::{Core, Driver, Kind, Token, TICK_MS};
use super::{EngineOptions, Idle};
use crate::proxy::l4::{BufId, ConnRef, Io, Side, Slice, Watch};

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Completions handled per batch before the next submit.
const BATCH: usize = 512;
const BGID: u16 = 0;
/// Connect addresses per boxed chunk (see `Uring::addrs`).
const ADDR_CHUNK: usize = 64;
type AddrChunk = [(libc::sockaddr_storage, libc::socklen_t); ADDR_CHUNK];
/// Empty spinning laps between two runs of the batch bookkeeping (see `run`).
const QUIET_LAPS: u32 = 32;
/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h, kernel 5.19): arm the poll before
/// the first receive attempt.
const RECVSEND_POLL_FIRST: u16 = 1;
/// Multishot receive states (by fd number) per boxed chunk (see `Uring::multi`).
const MULTI_CHUNK: usize = 256;
/// Gathered-send headers per boxed chunk (see `Uring::msgs`).
const MSG_CHUNK: usize = 64;

/// The `sendmsg` header and iovecs of one gathered send (one per slot and direction:
/// a connection has at most one send in flight per direction).
struct Msg {
    hdr: libc::msghdr,
    iov: [libc::iovec; 2],
}

fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        // Lets a spinning worker see pending task work without a syscall.
        .setup_taskrun_flag()
        .setup_cqsize(CQ_ENTRIES)
        .setup_submit_all();
    b
}

/// Can this process run the engine? (io_uring_setup may be blocked by seccomp or
/// `kernel.io_uring_disabled`, and the buffer ring needs kernel ≥ 5.19.)
///
/// Runs on a throw-away thread: tearing a ring down queues task work on the thread that
/// created it, which interrupts that thread's next blocking socket call that has a
/// timeout with `EINTR` — the caller (the daemon's main thread, a test) must not see it.
pub(crate) fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("tickmesh-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot spawn the io_uring probe thread: {e}"))?
        .join()
        .map_err(|_| "the io_uring probe panicked".to_string())?
}

fn probe_here() -> Result<(), String> {
    let ring = builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN failed: {e}"))?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (op, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::Connect::CODE, "connect"),
        (opcode::PollAdd::CODE, "poll_add"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
    ] {
        if !p.is_supported(op) {
            return Err(format!("io_uring lacks {name}"));
        }
    }
    BufRing::new(&ring, 8)
        .map(drop)
        .map_err(|e| format!("provided buffer ring: {e}"))
}

// === buffer ring ===

/// The provided-buffer ring shared with the kernel, over the worker's [`BufPool`].
struct BufRing {
    entries: NonNull<BufRingEntry>,
    layout: std::alloc::Layout,
    count: u16,
    tail: u16,
    /// Buffers currently in the kernel's ring.
    available: u32,
    pool: BufPool,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16) -> io::Result<BufRing> {
        debug_assert!(count.is_power_of_two() && count as usize <= POOL_BUFFERS);
        let size = count as usize * std::mem::size_of::<BufRingEntry>();
        let layout = std::alloc::Layout::from_size_align(size.max(4096), 4096)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let entries = NonNull::new(p.cast::<BufRingEntry>())
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut br = BufRing {
            entries,
            layout,
            count,
            tail: 0,
            available: 0,
            pool: BufPool::new(),
        };
        // SAFETY: the ring memory is page-aligned, `count` entries long, and lives until
        // `br` drops — after the IoUring (field order in `Uring`; in `probe` the ring is
        // dropped at the end of the function too, after `br` is, but the kernel only
        // reads the ring while an operation selects a buffer, and none is submitted).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                BGID,
                0,
            )?;
        }
        for b in 0..count {
            br.add(b);
        }
        Ok(br)
    }

    /// Post buffer `b` to the kernel.
    #[inline]
    fn add(&mut self, b: BufId) {
        let mask = self.count - 1;
        // SAFETY: (tail & mask) < count, inside the ring allocation; the kernel does not
        // read entries beyond the published tail, so writing this one races nothing.
        unsafe {
            let e = &mut *self.entries.as_ptr().add((self.tail & mask) as usize);
            e.set_addr(self.pool.ptr(b) as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(b);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's reserved field (the kernel's ABI);
        // it is u16-aligned. Release orders the entry writes before the tail.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.available += 1;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that read it is gone.
        unsafe { std::alloc::dealloc(self.entries.as_ptr().cast(), self.layout) }
    }
}

// === the driver ===

pub(crate) struct Uring {
    // Field order matters: the ring drops (and stops touching memory) first.
    ring: IoUring,
    bufs: BufRing,
    /// Connect addresses by slot, in chunks that never move: the kernel reads an
    /// address when the SQE is submitted, and a connect pushed earlier in the same lap
    /// must still point at its own (one growing `Vec` moved them when a burst of new
    /// connections raised the slab's high-water mark: connects then read garbage and
    /// failed with EAFNOSUPPORT).
    addrs: Vec<Box<AddrChunk>>,
    /// Write buffers not held by a proxy.
    write_free: Vec<BufId>,
    /// Gathered-send headers by slot and direction, in chunks that never move (the
    /// kernel reads them when the send is issued, possibly after the submit returns).
    msgs: Vec<Box<[[Msg; 2]; MSG_CHUNK]>>,
    /// Multishot receive state by socket fd number, in chunks that grow with the
    /// highest fd seen (allocation only then).
    multi: Vec<Box<[Multi; MULTI_CHUNK]>>,
    /// Multishot completions that arrived before their connection asked, in arrival
    /// order: (fd, state generation, unused, result, flags). Each owns a pool buffer or
    /// ends its multishot, so the list stays within the pool plus one per socket; preallocated
    /// for the pool (growing past that is a control-rate event: many connections ending
    /// at once while backpressured).
    held: Vec<(u32, u16, u8, i32, u32)>,
    /// Completions handed out of `held` on an ask, delivered later in the same lap (a
    /// completion is never delivered from inside the proxy's own call).
    ready: Vec<(u32, u16, Side, i32, Option<BufId>)>,
}

/// One socket's multishot receive, as the engine tracks it.
#[derive(Debug, Clone, Copy)]
struct Multi {
    /// The state belongs to the socket now open under this fd number.
    live: bool,
    /// Bumped each time a state starts on this fd number (it is in the tokens).
    gen: u16,
    /// The connection and side whose receives these are (stale while parked).
    owner: ConnRef,
    side: Side,
    /// The socket idles in the pool: nobody asks; anything that arrives kills it.
    parked: bool,
    /// Something arrived while parked: the socket must not be handed out again.
    dead: bool,
    /// Parked with a session that may hear from its peer while idle ([`Io::park_session`]):
    /// bytes go to the worker instead of killing the socket.
    session: bool,
    /// A multishot receive is in the kernel (its final completion has not arrived).
    armed: bool,
    /// The connection asked and got nothing yet: the next completion is its.
    wanted: bool,
    /// We asked the kernel to cancel it (the connection did not keep up).
    cancelling: bool,
    /// The connection cancelled its operations (closing, abandoning the socket).
    dropped: bool,
    /// Completions in `Uring::held` for this socket.
    held: u16,
}

impl Default for Multi {
    fn default() -> Multi {
        Multi {
            live: false,
            gen: 0,
            owner: ConnRef { slot: 0, gen: 0 },
            side: Side::Down,
            parked: false,
            dead: false,
            session: false,
            armed: false,
            wanted: false,
            cancelling: false,
            dropped: false,
            held: 0,
        }
    }
}

impl Multi {
    #[inline]
    fn owned_by(&self, c: ConnRef, side: Side) -> bool {
        self.live && !self.parked && self.owner == c && self.side == side
    }
}

impl Uring {
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = builder().build(SQ_ENTRIES)?;
        let bufs = BufRing::new(&ring, POOL_BUFFERS as u16)?;
        Ok(Uring {
            ring,
            bufs,
            addrs: Vec::new(),
            write_free: BufPool::write_ids().collect(),
            msgs: Vec::new(),
            multi: Vec::new(),
            held: Vec::with_capacity(POOL_BUFFERS),
            ready: Vec::with_capacity(64),
        })
    }

    /// The multishot state of socket `fd` (the table grown to it on first use).
    #[inline]
    fn multi_mut(&mut self, fd: RawFd) -> &mut Multi {
        let i = fd.max(0) as usize;
        while self.multi.len() <= i / MULTI_CHUNK {
            // Grows with the highest fd number only.
            self.multi.push(Box::new([Multi::default(); MULTI_CHUNK]));
        }
        &mut self.multi[i / MULTI_CHUNK][i % MULTI_CHUNK]
    }

    #[inline]
    fn multi_get(&self, fd: RawFd) -> Option<&Multi> {
        if fd < 0 {
            return None;
        }
        let i = fd as usize;
        self.multi.get(i / MULTI_CHUNK).map(|c| &c[i % MULTI_CHUNK])
    }

    /// Whether `c`'s `side` has live multishot state on `fd` (a plain `recv` on such a
    /// socket must go through it: two receives armed on one socket would split its
    /// bytes between them).
    #[inline]
    fn multi_on(&self, c: ConnRef, side: Side, fd: RawFd) -> bool {
        self.multi_get(fd).is_some_and(|m| m.owned_by(c, side))
    }

    fn multi_token(fd: RawFd, gen: u16) -> u64 {
        Token::encode(Kind::RecvMulti, 0, gen, fd as u32)
    }

    fn arm_multi(&mut self, fd: RawFd, gen: u16) {
        let e = opcode::RecvMulti::new(Fd(fd), BGID)
            .build()
            .user_data(Self::multi_token(fd, gen));
        // SAFETY: the kernel picks each buffer from the ring, whose memory outlives it.
        unsafe { self.push(e) }
    }

    fn cancel_multi(&mut self, fd: RawFd, gen: u16) {
        let e = opcode::AsyncCancel::new(Self::multi_token(fd, gen))
            .build()
            .user_data(Token::NOTHING);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    /// Give back the held completions of socket `fd` (nobody will ask for them).
    fn drop_held(&mut self, fd: RawFd) {
        let gen = self.multi_mut(fd).gen;
        let mut i = 0;
        while i < self.held.len() {
            let (f, g, _, _, flags) = self.held[i];
            if f == fd as u32 && g == gen {
                self.held.remove(i);
                if let Some(b) = cqueue::buffer_select(flags) {
                    self.release(b);
                }
            } else {
                i += 1;
            }
        }
        self.multi_mut(fd).held = 0;
    }

    /// Socket `fd`'s state ends (the socket closes, or another tenant of the number
    /// starts): its multishot is cancelled, its held completions dropped; completions
    /// still on their way carry the old generation and are dropped on arrival.
    fn end_multi(&mut self, fd: RawFd) {
        let m = *self.multi_mut(fd);
        if !m.live {
            return;
        }
        if m.armed && !m.cancelling {
            // By user data, not by fd: the socket closes right after this (the
            // kernel's own reference keeps it open until the cancel runs, at the next
            // submit), and its number may be reused by then. Also when the connection
            // dropped it (`cancel_all`): that cancel goes by fd at the next submit, and
            // the fd may be closed by then (the connection's own operations can end in
            // the same lap) — it then finds nothing, and the armed multishot would keep
            // the socket open for ever (a client never saw its connection close).
            self.cancel_multi(fd, m.gen);
        }
        if m.held > 0 {
            self.drop_held(fd);
        }
        self.multi_mut(fd).live = false;
    }

    /// Queue an entry, flushing the submission queue first if it is full.
    ///
    /// # Safety
    /// Every pointer in `e` must stay valid until its completion arrives.
    #[inline]
    unsafe fn push(&mut self, e: squeue::Entry) {
        loop {
            if self.ring.submission().push(&e).is_ok() {
                return;
            }
            // Full: submit what is queued (rare: only with > SQ_ENTRIES ops per batch).
            if let Err(err) = self.ring.submit() {
                if err.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!("io_uring submit failed: {err}");
                }
            }
        }
    }

    /// Submit and reap without blocking; enters the kernel only when there is
    /// something to submit or task work to run.
    #[inline]
    fn poll(&mut self) -> io::Result<()> {
        let (pending, taskrun, overflow) = {
            let sq = self.ring.submission();
            (!sq.is_empty(), sq.taskrun(), sq.cq_overflow())
        };
        if pending || taskrun || overflow {
            self.ring.submitter().submit_and_wait(0)?;
        }
        Ok(())
    }

    /// Submit and wait up to `timeout` for a completion.
    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Io for Uring {
    fn adopt(&mut self, _c: ConnRef, _fd: RawFd) {}

    // Completions carry the issuing slot in their own tokens: nothing to move but a
    // parked socket's receive state, which now answers `c`.
    fn attach(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        if let Some(m) = self.multi_get(fd).copied() {
            if m.live && m.parked {
                debug_assert!(!m.dead, "a dead parked socket was handed out");
                let st = self.multi_mut(fd);
                st.parked = false;
                st.session = false;
                st.owner = c;
                st.side = side;
            }
        }
    }

    fn connect(&mut self, c: ConnRef, fd: RawFd, addr: SocketAddr) {
        let slot = c.slot as usize;
        let storage = crate::engine::sys::to_storage(&addr);
        while self.addrs.len() <= slot / ADDR_CHUNK {
            // Grows with the slab's high-water mark only; a chunk, once boxed, stays put.
            self.addrs.push(Box::new([storage; ADDR_CHUNK]));
        }
        let entry = &mut self.addrs[slot / ADDR_CHUNK][slot % ADDR_CHUNK];
        *entry = storage;
        let (ss, len) = &*entry;
        let e = opcode::Connect::new(Fd(fd), (ss as *const libc::sockaddr_storage).cast(), *len)
            .build()
            .user_data(Token::encode(Kind::Connect, 0, c.gen, c.slot));
        // SAFETY: the slot's entry is not touched again until this slot's connect
        // completes (one connect in flight per connection), and its chunk is boxed: it
        // never moves and lives as long as the ring.
        unsafe { self.push(e) }
    }

    fn cancel_connect(&mut self, c: ConnRef, _fd: RawFd) -> bool {
        let e = opcode::AsyncCancel::new(Token::encode(Kind::Connect, 0, c.gen, c.slot))
            .build()
            .user_data(Token::NOTHING);
        // SAFETY: no pointers.
        unsafe { self.push(e) };
        false
    }

    #[inline]
    fn recv(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        if self.multi_on(c, side, fd) {
            return self.recv_multi(c, side, fd);
        }
        let e = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(Token::encode(Kind::Recv, side as u8, c.gen, c.slot));
        // SAFETY: the kernel picks the buffer from the ring, whose memory outlives it.
        unsafe { self.push(e) }
    }

    #[inline]
    fn recv_reply(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        if self.multi_on(c, side, fd) {
            return self.recv_multi(c, side, fd);
        }
        // Poll first: without the hint the kernel tries the receive at submission, finds
        // nothing (the peer has not answered yet) and only then arms its poll.
        let e = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(BGID)
            .ioprio(RECVSEND_POLL_FIRST)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(Token::encode(Kind::Recv, side as u8, c.gen, c.slot));
        // SAFETY: as in `recv`.
        unsafe { self.push(e) }
    }

    fn recv_multi(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        let m = *self.multi_mut(fd);
        if !m.owned_by(c, side) {
            if m.live {
                // Not this connection's: the previous socket under this number closed
                // without `forget`/`drop_socket` (a bug; nothing of it must leak here).
                debug_assert!(false, "multishot state of a socket closed unannounced");
                self.end_multi(fd);
            }
            *self.multi_mut(fd) = Multi {
                live: true,
                gen: m.gen.wrapping_add(1),
                owner: c,
                side,
                ..Multi::default()
            };
        } else if m.held > 0 {
            // What arrived before the ask, oldest first.
            if let Some(i) = self
                .held
                .iter()
                .position(|h| h.0 == fd as u32 && h.1 == m.gen)
            {
                let (_, _, _, res, flags) = self.held.remove(i);
                self.multi_mut(fd).held -= 1;
                self.ready
                    .push((c.slot, c.gen, side, res, cqueue::buffer_select(flags)));
                return;
            }
            debug_assert!(false, "multishot held count without a held completion");
            self.multi_mut(fd).held = 0;
        }
        let m = self.multi_mut(fd);
        m.wanted = true;
        if !m.armed {
            m.armed = true;
            m.cancelling = false;
            m.dropped = false;
            let gen = m.gen;
            self.arm_multi(fd, gen);
        }
    }

    fn forget(&mut self, c: ConnRef, fds: [RawFd; 2]) {
        for fd in fds {
            if self
                .multi_get(fd)
                .is_some_and(|m| m.live && !m.parked && m.owner == c)
            {
                self.end_multi(fd);
            }
        }
    }

    fn park(&mut self, c: ConnRef, side: Side, fd: RawFd) -> bool {
        let Some(m) = self.multi_get(fd).copied() else {
            return true;
        };
        if !m.owned_by(c, side) {
            // Never received through a multishot (a TLS shadow's upstream): the pool
            // checks it.
            return true;
        }
        if m.held > 0 || m.wanted {
            // Bytes or an end of stream nobody asked for (or a receive still asked):
            // not reusable.
            return false;
        }
        if !m.armed || m.cancelling || m.dropped {
            // Nothing watches it while parked: hand it over unwatched (the pool's
            // own check applies).
            self.end_multi(fd);
            return true;
        }
        self.multi_mut(fd).parked = true;
        true
    }

    fn park_session(&mut self, c: ConnRef, side: Side, fd: RawFd) -> bool {
        let watched = self.multi_get(fd).is_some_and(|m| m.owned_by(c, side));
        if !self.park(c, side, fd) {
            return false;
        }
        if watched {
            if let Some(m) = self.multi_get(fd).copied() {
                if m.live && m.parked {
                    self.multi_mut(fd).session = true;
                }
            }
        }
        true
    }

    fn parked_alive(&self, fd: RawFd) -> Option<bool> {
        self.multi_get(fd)
            .filter(|m| m.live && m.parked)
            .map(|m| !m.dead)
    }

    fn drop_socket(&mut self, fd: RawFd) {
        if fd >= 0 {
            self.end_multi(fd);
        }
    }

    #[inline]
    fn send(&mut self, c: ConnRef, from: Side, fd: RawFd, buf: BufId, off: u32, len: u32) {
        // SAFETY: off + len ≤ BUF_SIZE (the proxy sends within what it received).
        let p = unsafe { self.bufs.pool.ptr(buf).add(off as usize) };
        let e = opcode::Send::new(Fd(fd), p, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Token::encode(Kind::Send, from as u8, c.gen, c.slot));
        // SAFETY: the buffer stays in the connection's queue (not in the kernel's ring)
        // until this send completes.
        unsafe { self.push(e) }
    }

    fn sendv(&mut self, c: ConnRef, from: Side, fd: RawFd, first: Slice, second: Slice) {
        let slot = c.slot as usize;
        while self.msgs.len() <= slot / MSG_CHUNK {
            // Grows with the slab's high-water mark only; a chunk, once boxed, stays put.
            self.msgs.push(Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| Msg {
                    // SAFETY: msghdr and iovec are plain old data; all-zero is valid.
                    hdr: unsafe { std::mem::zeroed() },
                    // SAFETY: as above.
                    iov: unsafe { std::mem::zeroed() },
                })
            })));
        }
        // SAFETY: off + len ≤ BUF_SIZE for both slices (the proxy sends within what it
        // received or wrote).
        let (a, b) = unsafe {
            (
                self.bufs.pool.ptr(first.0).add(first.1 as usize),
                self.bufs.pool.ptr(second.0).add(second.1 as usize),
            )
        };
        let m = &mut self.msgs[slot / MSG_CHUNK][slot % MSG_CHUNK][from.idx()];
        m.iov[0] = libc::iovec {
            iov_base: a.cast(),
            iov_len: first.2 as usize,
        };
        m.iov[1] = libc::iovec {
            iov_base: b.cast(),
            iov_len: second.2 as usize,
        };
        m.hdr.msg_iov = m.iov.as_mut_ptr();
        m.hdr.msg_iovlen = 2;
        let e = opcode::SendMsg::new(Fd(fd), &m.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(Token::encode(Kind::Send, from as u8, c.gen, c.slot));
        // SAFETY: the header, its iovecs (boxed chunk, never moved, not rewritten until
        // this direction's send completes: one in flight) and both buffers (in the
        // connection's queue until the send completes) outlive the operation.
        unsafe { self.push(e) }
    }

    #[inline]
    fn release(&mut self, buf: BufId) {
        if BufPool::is_write(buf) {
            self.write_free.push(buf);
        } else {
            self.bufs.add(buf);
        }
    }

    #[inline]
    fn take(&mut self) -> Option<BufId> {
        self.write_free.pop()
    }

    #[inline]
    fn bytes(&self, buf: BufId) -> &[u8] {
        // SAFETY: the proxy holds `buf` (a receive completed into it, or it was taken):
        // it is not in the kernel's buffer ring, so nothing writes it concurrently.
        unsafe { self.bufs.pool.slice(buf) }
    }

    #[inline]
    fn bytes_mut(&mut self, buf: BufId) -> &mut [u8] {
        // SAFETY: as in `bytes`; the proxy never writes a buffer while sending it.
        unsafe { self.bufs.pool.slice_mut(buf) }
    }

    #[inline]
    fn buffers_available(&self) -> bool {
        self.bufs.available > 0
    }

    fn cancel_all(&mut self, c: ConnRef, fds: [RawFd; 2]) -> bool {
        for fd in fds {
            let Some(m) = self.multi_get(fd).copied() else {
                continue;
            };
            if m.live && !m.parked && m.owner == c {
                // The connection waits only for what it asked; held completions and
                // the cancelled multishot's unasked ones are dropped.
                self.multi_mut(fd).dropped = true;
                if m.held > 0 {
                    self.drop_held(fd);
                }
            }
        }
        for fd in fds {
            if fd >= 0 {
                let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                    .build()
                    .user_data(Token::NOTHING);
                // SAFETY: no pointers.
                unsafe { self.push(e) };
            }
        }
        false
    }

    fn watch(&mut self, w: Watch, fd: RawFd) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(watch_token(w));
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }

    fn unwatch(&mut self, w: Watch, _fd: RawFd) {
        let e = opcode::PollRemove::new(watch_token(w))
            .build()
            .user_data(Token::NOTHING);
        // SAFETY: no pointers.
        unsafe { self.push(e) }
    }
}

fn watch_token(w: Watch) -> u64 {
    match w {
        Watch::Listener(l) => Token::encode(Kind::UdpListener, 0, 0, l),
        Watch::Session(s, g) => Token::encode(Kind::UdpSession, 0, g, s),
    }
}

impl Driver for Uring {
    fn arm_accept(&mut self, l: u32, fd: RawFd) {
        let e = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::encode(Kind::Accept, 0, 0, l));
        // SAFETY: no pointers (no peer address requested).
        unsafe { self.push(e) }
    }

    fn disarm_accept(&mut self, l: u32, _fd: RawFd) -> bool {
        let e = opcode::AsyncCancel::new(Token::encode(Kind::Accept, 0, 0, l))
            .build()
            .user_data(Token::NOTHING);
        // SAFETY: no pointers.
        unsafe { self.push(e) };
        false
    }
}

// === the loop ===

/// Run one worker until the engine stops it.
pub(crate) fn run(core: &mut Core, io: &mut Uring, opts: &EngineOptions) -> io::Result<()> {
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(BATCH);
    let mut last_work = Instant::now();
    let tick = Duration::from_millis(TICK_MS);
    let mut stop_deadline: Option<Instant> = None;
    let mut quiet_laps = 0u32;
    loop {
        // Submit what the last batch queued, then wait or poll for completions.
        let ready = !io.ring.completion().is_empty() || core.crypto_busy() || !io.ready.is_empty();
        // A turn that submits is busy (the sends run inside this enter).
        let submitting = !io.ring.submission().is_empty();
        let idle_wait = match opts.idle {
            Idle::Spin => false,
            Idle::Adaptive => !ready && last_work.elapsed() >= opts.spin,
            Idle::Park => !ready,
        };
        if idle_wait {
            io.wait(tick)?;
            // Asleep in the kernel is not busy (what this enter submitted is lost to
            // the count: a small undercount in park/adaptive modes only).
            core.busy.woke();
            quiet_laps = 0;
        } else {
            io.poll()?;
            // A spinning lap that found nothing skips the batch bookkeeping (the clock
            // read, the table load): profiled at ≈ 70% of a spinning worker's time,
            // it delayed noticing the next completion. Every QUIET_LAPS-th empty lap
            // still runs it, so timers, table swaps, stop and starved receives wait
            // a few microseconds at most.
            if io.ring.completion().is_empty()
                && !core.crypto_busy()
                && io.ready.is_empty()
                && quiet_laps < QUIET_LAPS
            {
                quiet_laps += 1;
                core.busy.lap(submitting, 0);
                continue;
            }
            quiet_laps = 0;
        }
        // After the wait: what it returned is handled with the newest table.
        core.begin_batch(io);
        // Starved receives retried there may have been answered from held completions.
        deliver_ready(core, io);
        if core.stopping() {
            let now = Instant::now();
            let deadline = *stop_deadline.get_or_insert_with(|| {
                core.abort_all(io);
                now + Duration::from_secs(2)
            });
            if core.idle() || now >= deadline {
                return Ok(());
            }
        }
        cqes.clear();
        cqes.extend(
            io.ring
                .completion()
                .take(BATCH)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        if !cqes.is_empty() && opts.idle == Idle::Adaptive {
            last_work = Instant::now();
        }
        for &(ud, res, flags) in &cqes {
            dispatch(core, io, ud, res, flags);
        }
        deliver_ready(core, io);
        core.poll_crypto(io);
        deliver_ready(core, io);
        core.end_batch();
        core.busy
            .lap(submitting || ready || !cqes.is_empty(), cqes.len());
    }
}

#[inline]
fn dispatch(core: &mut Core, io: &mut Uring, ud: u64, res: i32, flags: u32) {
    let t = Token::decode(ud);
    let more = cqueue::more(flags);
    match t.kind {
        Kind::Nothing | Kind::Sock => {}
        Kind::Accept => core.on_accept(t.slot, res, more, io),
        Kind::Connect => core.on_connect(t.slot, t.gen, res, io),
        Kind::Recv => {
            let buf = cqueue::buffer_select(flags);
            if buf.is_some() {
                io.bufs.available -= 1;
            }
            core.on_recv(t.slot, t.gen, Side::from_idx(t.aux as usize), res, buf, io)
        }
        Kind::RecvMulti => on_multi(core, io, t, res, flags),
        Kind::Send => core.on_send(t.slot, t.gen, Side::from_idx(t.aux as usize), res, io),
        Kind::UdpListener | Kind::UdpSession => {
            let w = if t.kind == Kind::UdpListener {
                Watch::Listener(t.slot)
            } else {
                Watch::Session(t.slot, t.gen)
            };
            if res < 0 {
                // Cancelled by unwatch (or the socket failed): nothing to read.
                if res != -libc::ECANCELED && res != -libc::ENOENT && !more {
                    core.on_udp_ready(w, false, io);
                }
                return;
            }
            core.on_udp_ready(w, more, io)
        }
    }
}

/// A multishot receive completed: hand it to its connection if it asked, else hold it
/// (and cancel the multishot: the connection is not keeping up); on a parked socket,
/// mark the socket dead.
fn on_multi(core: &mut Core, io: &mut Uring, t: Token, res: i32, flags: u32) {
    let fd = t.slot as RawFd;
    let buf = cqueue::buffer_select(flags);
    if buf.is_some() {
        io.bufs.available -= 1;
    }
    let more = cqueue::more(flags);
    let m = match io.multi_get(fd) {
        Some(m) if m.live && m.gen == t.gen => *m,
        _ => {
            // A closed socket's last completions.
            if let Some(b) = buf {
                io.release(b);
            }
            return;
        }
    };
    if !more {
        io.multi_mut(fd).armed = false;
    }
    if m.parked && m.session && res > 0 && !m.dead {
        if let Some(b) = buf {
            // Idle in the pool with a session (TLS): its peer may speak while it idles
            // (a late ticket, a KeyUpdate). The worker's session judges the bytes; it
            // closes the connection itself (`drop_socket` ends this state) if they end it.
            core.on_parked_bytes(fd, b, res as u32, io);
            let st = io.multi_mut(fd);
            if st.live && st.gen == t.gen && st.parked && !st.armed && !st.dead {
                // The kernel ended the multishot (it may, e.g. when the buffer ring ran
                // low): keep watching.
                st.armed = true;
                st.cancelling = false;
                io.arm_multi(fd, t.gen);
            }
            return;
        }
    }
    if m.parked {
        // Idle in the pool: an end of stream, an error or bytes nobody asked for —
        // the socket is done for. Nothing is kept; the pool closes it on its next look.
        if let Some(b) = buf {
            io.release(b);
        }
        let st = io.multi_mut(fd);
        st.dead = true;
        if !more {
            st.cancelling = false;
        } else if !st.cancelling {
            st.cancelling = true;
            io.cancel_multi(fd, t.gen);
        }
        return;
    }
    let (c, side) = (m.owner, m.side);
    if !more && res == -libc::ECANCELED && !m.dropped {
        // Our own backpressure cancel took effect; re-arm if the connection asked since.
        let st = io.multi_mut(fd);
        st.cancelling = false;
        if st.wanted {
            st.armed = true;
            io.arm_multi(fd, t.gen);
        }
        return;
    }
    if m.wanted {
        io.multi_mut(fd).wanted = false;
        core.on_recv(c.slot, c.gen, side, res, buf, io);
        return;
    }
    if m.dropped {
        // The connection cancelled and does not wait for this one.
        if let Some(b) = buf {
            io.release(b);
        }
        return;
    }
    // Not asked for: hold it, in order, until the connection asks.
    io.held.push((fd as u32, t.gen, 0, res, flags));
    let st = io.multi_mut(fd);
    st.held += 1;
    if more && !st.cancelling {
        st.cancelling = true;
        io.cancel_multi(fd, t.gen);
    }
}

/// Completions handed out of the held list by asks during the lap.
fn deliver_ready(core: &mut Core, io: &mut Uring) {
    // Each delivery may ask again and queue one more; the held list bounds the rounds.
    let mut i = 0;
    while i < io.ready.len() {
        let (slot, gen, side, res, buf) = io.ready[i];
        i += 1;
        core.on_recv(slot, gen, side, res, buf, io);
    }
    io.ready.clear();
}
