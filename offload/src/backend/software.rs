//! The software backend: the same ring, served by `ring`'s AEADs on the CPU.
//!
//! Two modes. [`Inline`] runs jobs inside the caller's `Engine::poll`, at most one batch
//! per call, so the poll loop keeps its latency budget. [`Threaded`] hands jobs to a
//! dedicated crypto thread through two bounded lock-free SPSC queues (crossbeam
//! `ArrayQueue`): the worker never waits for it. The crypto thread spins, then yields,
//! then parks briefly when idle; the worker wakes it (one `unpark`) only if it parked.
//!
//! Never allocates per job: queue capacities equal the engine's slot count, so a push
//! that the engine could make never fails for lack of room.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::Backoff;

use super::{Backend, BackendKind};
use crate::job::Job;

// === impl Inline ===

/// Jobs run in the caller's poll loop.
pub struct Inline {
    pending: VecDeque<Box<Job>>,
}

impl Inline {
    pub fn new(slots: usize) -> Self {
        Inline {
            pending: VecDeque::with_capacity(slots),
        }
    }
}

impl Backend for Inline {
    fn kind(&self) -> BackendKind {
        BackendKind::SoftwareInline
    }

    fn enqueue(&mut self, sq: &mut VecDeque<Box<Job>>) -> usize {
        let n = sq.len();
        // Capacity equals the slot count, so this never reallocates.
        self.pending.extend(sq.drain(..));
        n
    }

    fn dequeue(&mut self, cq: &mut VecDeque<Box<Job>>, max: usize) -> usize {
        let n = max.min(self.pending.len());
        for _ in 0..n {
            if let Some(mut job) = self.pending.pop_front() {
                job.run_software();
                cq.push_back(job);
            }
        }
        n
    }

    fn in_device(&self) -> usize {
        self.pending.len()
    }
}

// === impl Threaded ===

struct Shared {
    submit: ArrayQueue<Box<Job>>,
    complete: ArrayQueue<Box<Job>>,
    stop: AtomicBool,
    parked: AtomicBool,
}

/// Jobs run on a dedicated crypto thread.
pub struct Threaded {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    in_device: usize,
}

impl Threaded {
    /// Start the crypto thread. `cpu` pins it (best effort; a failure is logged).
    pub fn start(slots: usize, batch: usize, cpu: Option<usize>) -> std::io::Result<Self> {
        let slots = slots.max(1);
        let shared = Arc::new(Shared {
            submit: ArrayQueue::new(slots),
            complete: ArrayQueue::new(slots),
            stop: AtomicBool::new(false),
            parked: AtomicBool::new(false),
        });
        let theirs = Arc::clone(&shared);
        let batch = batch.max(1);
        let thread = std::thread::Builder::new()
            .name("tickmesh-crypto".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to_cpu(cpu);
                }
                crypto_loop(&theirs, batch)
            })?;
        Ok(Threaded {
            shared,
            thread: Some(thread),
            in_device: 0,
        })
    }
}

fn crypto_loop(shared: &Shared, batch: usize) {
    let backoff = Backoff::new();
    loop {
        let mut done = 0;
        while done < batch {
            let Some(mut job) = shared.submit.pop() else {
                break;
            };
            job.run_software();
            let mut job = job;
            // The completion queue holds as many jobs as exist, so this push only fails if
            // that invariant is broken; retrying (instead of dropping) never loses a job.
            while let Err(back) = shared.complete.push(job) {
                job = back;
                std::hint::spin_loop();
            }
            done += 1;
        }
        if done > 0 {
            backoff.reset();
            continue;
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if backoff.is_completed() {
            shared.parked.store(true, Ordering::SeqCst);
            // Pairs with the fence in `enqueue`: either we see the job or they see `parked`.
            fence(Ordering::SeqCst);
            if shared.submit.is_empty() && !shared.stop.load(Ordering::Acquire) {
                // Bounded so a missed wake-up costs at most this long.
                std::thread::park_timeout(Duration::from_millis(1));
            }
            shared.parked.store(false, Ordering::SeqCst);
            backoff.reset();
        } else {
            backoff.snooze();
        }
    }
}

#[allow(unsafe_code)]
fn pin_to_cpu(cpu: usize) {
    // SAFETY: `set` is a zeroed, properly sized cpu_set_t owned by this frame; CPU_SET
    // only writes inside it; sched_setaffinity(0, ..) affects the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin the crypto thread; it runs unpinned");
    }
}

impl Backend for Threaded {
    fn kind(&self) -> BackendKind {
        BackendKind::SoftwareThreaded
    }

    fn enqueue(&mut self, sq: &mut VecDeque<Box<Job>>) -> usize {
        let mut n = 0;
        while let Some(job) = sq.pop_front() {
            if let Err(job) = self.shared.submit.push(job) {
                sq.push_front(job);
                break;
            }
            n += 1;
        }
        if n > 0 {
            self.in_device += n;
            fence(Ordering::SeqCst);
            if self.shared.parked.load(Ordering::SeqCst) {
                if let Some(t) = &self.thread {
                    // A syscall, but only when the crypto thread had gone idle.
                    t.thread().unpark();
                }
            }
        }
        n
    }

    fn dequeue(&mut self, cq: &mut VecDeque<Box<Job>>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(job) = self.shared.complete.pop() else {
                break;
            };
            cq.push_back(job);
            n += 1;
        }
        self.in_device -= n;
        n
    }

    fn in_device(&self) -> usize {
        self.in_device
    }
}

impl Drop for Threaded {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                tracing::error!("the crypto thread panicked");
            }
        }
    }
}
