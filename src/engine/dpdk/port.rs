//! Ethernet ports, their queues and the mbufs that travel through them.
//!
//! Owns port set-up (one RX/TX queue pair per worker, RSS across the RX queues when there
//! is more than one), the per-NUMA-socket mbuf pools, and the safe view of an mbuf the
//! balancer rewrites. Set-up happens once, on the main thread, before workers start;
//! after that a worker touches only its own queue index on each port, which is the
//! ownership rule that makes the lock-free bursts below safe.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use anyhow::{bail, Context};
use dpdk_sys as sys;

use super::eal::strerror;
use super::lb::{PacketBuf, Verdict};

pub const BURST: usize = 32;
pub const RX_DESC: u16 = 1024;
pub const TX_DESC: u16 = 1024;

/// An mbuf pool on one NUMA socket. Freed after every port using it was closed.
pub struct Mempool {
    raw: NonNull<sys::rte_mempool>,
    pub socket: i32,
}

// SAFETY: DPDK mempools are multi-producer/multi-consumer and meant to be shared across
// lcores; the pointer is only freed in Drop, after all workers were joined.
unsafe impl Send for Mempool {}
unsafe impl Sync for Mempool {}

impl Mempool {
    pub fn new(name: &str, mbufs: u32, socket: i32) -> anyhow::Result<Mempool> {
        let cname = CString::new(name).context("pool name")?;
        // SAFETY: EAL is running; the name is NUL-terminated and copied by DPDK.
        let raw = unsafe {
            sys::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                mbufs,
                256,
                0,
                sys::tm_mbuf_default_buf_size(),
                socket,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(Mempool { raw, socket }),
            None => bail!(
                "cannot create the mbuf pool `{name}` ({mbufs} mbufs on socket {socket}): {}. \
                 Give DPDK more memory (--dpdk-memory, or more hugepages)",
                // SAFETY: plain read of this thread's rte_errno.
                strerror(unsafe { sys::tm_rte_errno() })
            ),
        }
    }

    /// A fresh mbuf holding a copy of `frame`, or `None` when the pool is empty or the
    /// frame does not fit one segment. Control path only (set-up, benchmarks).
    pub fn alloc_frame(&self, frame: &[u8]) -> Option<Mbuf> {
        let len = u16::try_from(frame.len()).ok()?;
        // SAFETY: a valid pool; the returned mbuf is owned by us.
        let m = NonNull::new(unsafe { sys::tm_pktmbuf_alloc(self.raw.as_ptr()) })?;
        let mut m = Mbuf(m);
        // SAFETY: owned mbuf; append checks tailroom and returns NULL without it.
        let p = unsafe { sys::tm_pktmbuf_append(m.0.as_ptr(), len) };
        if p.is_null() {
            return None;
        }
        m.data().copy_from_slice(frame);
        Some(m)
    }

    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: no port or worker uses the pool any more (ports close before pools drop).
        unsafe { sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}

/// A started Ethernet port. Dropping it stops and closes it.
pub struct Port {
    pub id: u16,
    pub name: String,
    pub mac: [u8; 6],
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub socket: i32,
}

/// The ports the EAL probed, by id and name.
pub fn probed_ports() -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for id in 0..sys::RTE_MAX_ETHPORTS as u16 {
        // SAFETY: querying validity of any id is allowed once the EAL runs.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            continue;
        }
        let mut name = [0 as std::os::raw::c_char; 64];
        // SAFETY: the buffer is RTE_ETH_NAME_MAX_LEN (64) bytes as the API requires.
        let rc = unsafe { sys::rte_eth_dev_get_name_by_port(id, name.as_mut_ptr()) };
        let name = if rc == 0 {
            // SAFETY: DPDK wrote a NUL-terminated name into the buffer.
            unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("port{id}")
        };
        out.push((id, name));
    }
    out
}

/// The NUMA socket of a port (0 when DPDK does not know).
pub fn port_socket(id: u16) -> i32 {
    // SAFETY: plain query on a valid port id.
    unsafe { sys::rte_eth_dev_socket_id(id) }.max(0)
}

impl Port {
    /// Configure `rx_queues` RX and `tx_queues` TX queues (RSS when `rx_queues > 1`),
    /// fill the RX rings from `pool`, and start the port.
    pub fn start(
        id: u16,
        name: &str,
        rx_queues: u16,
        tx_queues: u16,
        pool: &Mempool,
    ) -> anyhow::Result<Port> {
        let fail = |what: &str, rc: i32| {
            anyhow::anyhow!("port {id} ({name}): {what} failed: {}", strerror(-rc))
        };
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port id; info is a properly sized out-parameter.
        let rc = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
        if rc != 0 {
            return Err(fail("rte_eth_dev_info_get", rc));
        }
        if rx_queues > info.max_rx_queues || tx_queues > info.max_tx_queues {
            bail!(
                "port {id} ({name}) has at most {} RX / {} TX queues; {} workers need {rx_queues} / {tx_queues}. \
                 Use fewer workers, or for net_tap add `,queues=N` to its --dpdk-vdev",
                info.max_rx_queues, info.max_tx_queues, rx_queues.max(tx_queues)
            );
        }
        let mut conf = sys::rte_eth_conf::default();
        if rx_queues > 1 {
            // SAFETY: constant getter in the shim.
            let want = unsafe { sys::tm_eth_rss_ip_tcp_udp() };
            let hf = want & info.flow_type_rss_offloads;
            if hf != 0 {
                conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
                conf.rx_adv_conf.rss_conf.rss_hf = hf;
            } else {
                tracing::warn!("port {id} ({name}) cannot hash IP/TCP/UDP for RSS; its RX queues split traffic the driver's way");
            }
        }
        // The NIC's IPv4 header check, where it has one, spares the balancer its own
        // (mbufs flagged RTE_MBUF_F_RX_IP_CKSUM_GOOD skip it; see `PacketBuf`).
        if info.rx_offload_capa & RX_OFFLOAD_IPV4_CKSUM != 0 {
            conf.rxmode.offloads |= RX_OFFLOAD_IPV4_CKSUM;
        }
        // SAFETY: constant getter in the shim.
        let fast_free = unsafe { sys::tm_eth_tx_offload_mbuf_fast_free() };
        if info.tx_offload_capa & fast_free != 0 {
            conf.txmode.offloads |= fast_free;
        }
        // SAFETY: valid port, not started; conf outlives the call.
        let rc = unsafe { sys::rte_eth_dev_configure(id, rx_queues, tx_queues, &conf) };
        if rc != 0 {
            return Err(fail("rte_eth_dev_configure", rc));
        }
        let (mut nrx, mut ntx) = (RX_DESC, TX_DESC);
        // SAFETY: valid configured port; the out-parameters are plain u16s.
        let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nrx, &mut ntx) };
        if rc != 0 {
            return Err(fail("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        let socket = pool.socket as u32;
        for q in 0..rx_queues {
            // SAFETY: configured port, queue index < rx_queues; the pool outlives the port.
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(id, q, nrx, socket, std::ptr::null(), pool.as_ptr())
            };
            if rc != 0 {
                return Err(fail("rte_eth_rx_queue_setup", rc));
            }
        }
        for q in 0..tx_queues {
            // SAFETY: configured port, queue index < tx_queues; default txconf.
            let rc = unsafe { sys::rte_eth_tx_queue_setup(id, q, ntx, socket, std::ptr::null()) };
            if rc != 0 {
                return Err(fail("rte_eth_tx_queue_setup", rc));
            }
        }
        // SAFETY: all queues set up.
        let rc = unsafe { sys::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(fail("rte_eth_dev_start", rc));
        }
        // Promiscuous so that frames to the VIPs' MAC (ours) and broadcast ARP arrive on
        // NICs that filter; not every virtual device supports it, and that is fine.
        // SAFETY: started port.
        let _ = unsafe { sys::rte_eth_promiscuous_enable(id) };
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: started port; mac is an out-parameter.
        unsafe { sys::rte_eth_macaddr_get(id, &mut mac) };
        Ok(Port {
            id,
            name: name.to_string(),
            mac: mac.addr_bytes,
            rx_queues,
            tx_queues,
            socket: pool.socket,
        })
    }

    /// Driver counters (for the shutdown report).
    pub fn hw_stats(&self) -> (u64, u64, u64, u64, u64) {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: valid port; s is an out-parameter.
        unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        (s.ipackets, s.opackets, s.imissed, s.oerrors, s.rx_nombuf)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: workers were joined before ports drop; stop then close releases the
        // queues' mbufs back to their pool, which outlives the port.
        unsafe {
            let rc = sys::rte_eth_dev_stop(self.id);
            if rc != 0 {
                tracing::warn!("port {} stop: {}", self.name, strerror(-rc));
            }
            let rc = sys::rte_eth_dev_close(self.id);
            if rc != 0 {
                tracing::warn!("port {} close: {}", self.name, strerror(-rc));
            }
        }
    }
}

// === bursts ===

/// A burst of owned mbufs (at most [`BURST`]). Whatever is still held on drop is freed.
pub struct Burst {
    bufs: [*mut sys::rte_mbuf; BURST],
    len: usize,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            bufs: [std::ptr::null_mut(); BURST],
            len: 0,
        }
    }
}

impl Burst {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Receive up to `BURST` frames from `port`'s queue `queue` into an empty burst.
    /// The caller must be the only user of that queue (one worker per queue index).
    #[inline]
    pub fn rx(&mut self, port: u16, queue: u16) -> usize {
        debug_assert!(self.len == 0);
        // SAFETY: the array has room for BURST pointers; this worker owns the queue.
        self.len = usize::from(unsafe {
            sys::tm_eth_rx_burst(port, queue, self.bufs.as_mut_ptr(), BURST as u16)
        });
        self.len
    }

    /// Take mbuf `i` out of the burst (its slot becomes empty).
    #[inline]
    pub fn take(&mut self, i: usize) -> Mbuf {
        let p = std::mem::replace(&mut self.bufs[i], std::ptr::null_mut());
        Mbuf(NonNull::new(p).expect("rx burst slots below len are non-null"))
    }

    /// Apply the balancer's verdicts (`verdicts[i]` for frame `i`) to this received
    /// burst: the frames to forward stay, in order, at the front — the burst itself is
    /// then sent, no second array — frames for the kernel move to `exception` (freed
    /// when there is no exception port) and dropped ones are freed.
    #[inline]
    pub fn keep_forwarded(&mut self, verdicts: &[Verdict], mut exception: Option<&mut Burst>) {
        let n = self.len.min(verdicts.len());
        let mut k = 0;
        for (i, v) in verdicts[..n].iter().enumerate() {
            let m = self.bufs[i];
            match v {
                Verdict::Forward => {
                    self.bufs[k] = m;
                    k += 1;
                }
                Verdict::Exception if exception.is_some() => {
                    if let Some(e) = exception.as_deref_mut() {
                        // Never full: `e` is sent after every received burst, and a
                        // burst holds at most BURST frames.
                        debug_assert!(e.len < BURST);
                        e.bufs[e.len] = m;
                        e.len += 1;
                    }
                }
                // SAFETY: a received mbuf this burst owns, leaving it: freed exactly once
                // (its slot is past the new length or overwritten below).
                _ => unsafe { sys::tm_pktmbuf_free(m) },
            }
        }
        // Slots past `n` (verdicts shorter than the burst: not expected) are freed too.
        for &m in &self.bufs[n..self.len] {
            // SAFETY: as above, owned and leaving the burst.
            unsafe { sys::tm_pktmbuf_free(m) }
        }
        for m in &mut self.bufs[k..self.len] {
            *m = std::ptr::null_mut();
        }
        self.len = k;
    }

    /// The received mbufs, in place, for the balancer to rewrite before they are taken
    /// (no copy of the burst into another container).
    #[inline]
    pub fn mbufs_mut(&mut self) -> &mut [Mbuf] {
        debug_assert!(self.bufs[..self.len].iter().all(|m| !m.is_null()));
        // SAFETY: `Mbuf` is `repr(transparent)` over `NonNull<rte_mbuf>`, laid out as a
        // `*mut rte_mbuf`; the first `len` slots hold non-null mbufs this burst owns
        // (received, none taken yet: callers take only after this borrow ends). The
        // slice borrows the burst mutably, so no slot is emptied while it lives, and any
        // `Mbuf` swapped in through it is owned by the burst from then on.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_mut_ptr().cast::<Mbuf>(), self.len) }
    }

    /// Queue an mbuf for transmission (the burst must not be full: callers flush at BURST).
    #[inline]
    pub fn push(&mut self, m: Mbuf) {
        debug_assert!(self.len < BURST);
        self.bufs[self.len] = m.into_raw();
        self.len += 1;
    }

    /// Forget the (already taken) slots of a received burst.
    #[inline]
    pub fn reset(&mut self) {
        debug_assert!(self.bufs[..self.len].iter().all(|m| m.is_null()));
        self.len = 0;
    }

    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Send the burst on `port`/`queue`; frees what the ring did not take. Returns
    /// (sent packets, sent bytes, dropped).
    #[inline]
    pub fn tx(&mut self, port: u16, queue: u16) -> (u64, u64, u64) {
        let mut bytes = 0u64;
        for &m in &self.bufs[..self.len] {
            // SAFETY: queued mbufs are valid until handed to the driver below.
            bytes += u64::from(unsafe { (*m).pkt_len });
        }
        self.tx_counted(port, queue, bytes)
    }

    /// [`Burst::tx`] when the caller already knows the burst's `bytes` (the balancer
    /// measured them): no second pass over the mbufs.
    #[inline]
    pub fn tx_counted(&mut self, port: u16, queue: u16, bytes: u64) -> (u64, u64, u64) {
        if self.len == 0 {
            return (0, 0, 0);
        }
        // SAFETY: this worker owns TX queue `queue` on `port`; the driver takes ownership of
        // the first `sent` mbufs.
        let sent = usize::from(unsafe {
            sys::tm_eth_tx_burst(port, queue, self.bufs.as_mut_ptr(), self.len as u16)
        });
        let mut unsent_bytes = 0u64;
        for m in &mut self.bufs[sent..self.len] {
            // SAFETY: we still own the mbufs the driver did not take.
            unsafe {
                unsent_bytes += u64::from(sys::tm_pktmbuf_pkt_len(*m));
                sys::tm_pktmbuf_free(*m);
            }
            *m = std::ptr::null_mut();
        }
        let dropped = (self.len - sent) as u64;
        self.len = 0;
        (sent as u64, bytes - unsent_bytes, dropped)
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        for &m in &self.bufs[..self.len] {
            if !m.is_null() {
                // SAFETY: owned mbufs still in the burst.
                unsafe { sys::tm_pktmbuf_free(m) }
            }
        }
    }
}

/// `rte_pktmbuf_mtod` without a call into the shim: `buf_addr + data_off` (rte_mbuf.h).
///
/// # Safety
/// `m` must point at a valid mbuf.
#[inline(always)]
unsafe fn mtod(m: *mut sys::rte_mbuf) -> *mut u8 {
    // SAFETY: the caller guarantees `m` is valid; the sum stays inside its buffer.
    unsafe { ((*m).buf_addr as *mut u8).add(usize::from((*m).data_off)) }
}

/// `rte_prefetch0` as an intrinsic on x86-64 (the shim's call costs more than the hint).
#[inline(always)]
fn prefetch0(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above.
    unsafe {
        sys::tm_prefetch0(p.cast())
    }
}

/// `RTE_ETH_RX_OFFLOAD_IPV4_CKSUM` (rte_ethdev.h; a macro bindgen does not see).
const RX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;
/// `RTE_MBUF_F_RX_IP_CKSUM_MASK` and `_GOOD` (rte_mbuf_core.h): both bits set means
/// "none" (not correct, but the L4 checksum is), bit 4 alone "bad", neither "unknown".
const RX_IP_CKSUM_MASK: u64 = (1 << 4) | (1 << 7);
const RX_IP_CKSUM_GOOD: u64 = 1 << 7;

/// One owned mbuf. Freed on drop unless handed to a TX burst.
#[repr(transparent)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

impl Mbuf {
    fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }
    pub fn len(&self) -> usize {
        // SAFETY: an owned, valid mbuf.
        usize::from(unsafe { (*self.0.as_ptr()).data_len })
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: `data` is the mbuf's own data buffer (not inside the `Mbuf` handle), which
// stays put until the mbuf is freed, prepended to or resized; no two mbufs share one.
unsafe impl PacketBuf for Mbuf {
    #[inline]
    fn data(&mut self) -> &mut [u8] {
        let m = self.0.as_ptr();
        // SAFETY: we own the mbuf; its first segment holds data_len bytes at mtod. Only
        // the first segment is exposed (RX without scatter never chains segments).
        unsafe { std::slice::from_raw_parts_mut(mtod(m), usize::from((*m).data_len)) }
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: owned mbuf; prepend checks headroom and returns NULL without it.
        !unsafe { sys::tm_pktmbuf_prepend(self.0.as_ptr(), n) }.is_null()
    }
    #[inline(always)]
    fn prefetch(&self) {
        // SAFETY: an owned, valid mbuf; computing its data address reads only the mbuf
        // header, and prefetching any address is harmless.
        unsafe { prefetch0(mtod(self.0.as_ptr())) }
    }
    #[inline(always)]
    fn ip_checksum_good(&self) -> bool {
        // SAFETY: an owned, valid mbuf; ol_flags is in its first cache line, which
        // computing the data pointer reads anyway.
        let flags = unsafe { (*self.0.as_ptr()).ol_flags };
        flags & RX_IP_CKSUM_MASK == RX_IP_CKSUM_GOOD
    }
    fn resize(&mut self, len: usize) -> bool {
        let Ok(len) = u16::try_from(len) else {
            return false;
        };
        let have = self.len() as u16;
        // SAFETY: owned single-segment mbuf; append checks tailroom (NULL without it),
        // trim checks the length (-1 when too long); both keep pkt_len in step.
        unsafe {
            if len >= have {
                !sys::tm_pktmbuf_append(self.0.as_ptr(), len - have).is_null()
            } else {
                sys::tm_pktmbuf_trim(self.0.as_ptr(), have - len) == 0
            }
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own it and nobody else holds the pointer.
        unsafe { sys::tm_pktmbuf_free(self.0.as_ptr()) }
    }
}
