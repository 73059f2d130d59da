//! A worker's receive-buffer pool: one allocation of [`POOL_BUFFERS`] buffers of
//! [`BUF_SIZE`] bytes, addressed by index.
//!
//! Owns the memory only; which buffers are free is the engine's business (the kernel's
//! provided-buffer ring for `uring`, a free list for `epoll`). The region never moves or
//! shrinks while the pool lives, so the kernel may hold pointers into it. Pages are
//! touched only when a buffer is first used: resident memory grows with the buffers in
//! use, and is bounded by `(POOL_BUFFERS + WRITE_BUFFERS) × BUF_SIZE` (64 MiB) per worker.
//!
//! Ids below [`POOL_BUFFERS`] are receive buffers (the kernel's ring or the epoll free
//! list); ids from `POOL_BUFFERS` on are write buffers a proxy fills itself (HTTP heads
//! it rewrites, local responses), handed out by [`Io::take`](crate::proxy::l4::Io::take).

use std::alloc::{alloc, dealloc, Layout};
use std::ptr::NonNull;

pub use crate::proxy::l4::tcp::BUF_SIZE;
use crate::proxy::l4::BufId;

/// Buffers per worker (a power of two: the io_uring buffer ring needs one).
pub const POOL_BUFFERS: usize = 2048;
/// Write buffers per worker, ids `POOL_BUFFERS..POOL_BUFFERS + WRITE_BUFFERS`.
pub const WRITE_BUFFERS: usize = 2048;
const ALL_BUFFERS: usize = POOL_BUFFERS + WRITE_BUFFERS;

pub struct BufPool {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the pool is a plain owned allocation; it moves to the worker thread with its
// owner and is only ever used there.
unsafe impl Send for BufPool {}

impl BufPool {
    pub fn new() -> BufPool {
        // A valid layout: non-zero size, power-of-two alignment.
        let layout = Layout::from_size_align(ALL_BUFFERS * BUF_SIZE, 4096)
            .expect("buffer pool layout is a constant and valid");
        // SAFETY: the layout has non-zero size.
        let p = unsafe { alloc(layout) };
        let base = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        BufPool { base, layout }
    }

    /// The start of buffer `b`. Valid for `BUF_SIZE` bytes while the pool lives.
    #[inline]
    pub fn ptr(&self, b: BufId) -> *mut u8 {
        debug_assert!((b as usize) < ALL_BUFFERS);
        // SAFETY: b < ALL_BUFFERS, so the offset stays inside the allocation.
        unsafe { self.base.as_ptr().add(b as usize * BUF_SIZE) }
    }

    /// The ids of the write buffers.
    pub fn write_ids() -> impl DoubleEndedIterator<Item = BufId> {
        (POOL_BUFFERS as BufId..ALL_BUFFERS as BufId).rev()
    }

    /// Whether `b` is a write buffer (returned to the write free list, not the ring).
    #[inline]
    pub fn is_write(b: BufId) -> bool {
        b as usize >= POOL_BUFFERS
    }

    /// Buffer `b`, writable, for engines that fill it themselves.
    ///
    /// # Safety
    /// The kernel must not be writing into buffer `b` (it is not posted to a
    /// provided-buffer ring).
    #[inline]
    pub unsafe fn slice_mut(&mut self, b: BufId) -> &mut [u8] {
        std::slice::from_raw_parts_mut(self.ptr(b), BUF_SIZE)
    }

    /// Buffer `b`, readable.
    ///
    /// # Safety
    /// As for [`slice_mut`](Self::slice_mut).
    #[inline]
    pub unsafe fn slice(&self, b: BufId) -> &[u8] {
        std::slice::from_raw_parts(self.ptr(b), BUF_SIZE)
    }
}

impl Default for BufPool {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; engines drop the pool only after
        // the ring that could still write into it is gone.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}
