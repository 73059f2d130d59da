//! The software backend: the same ring, served by `ring`'s AEADs on the CPU.
//!
//! Two modes. [`Inline`] runs jobs on the caller's CPU: the engine runs each one as it is
//! submitted (`Backend::runs_at_submit`), while its bytes are still in L1, and completes
//! it through the completion ring; driven through `enqueue`/`dequeue` instead, it runs at
//! most one batch per `dequeue`, so a poll loop keeps its latency budget. [`Threaded`] hands jobs to a
//! dedicated crypto thread through two bounded lock-free SPSC queues (crossbeam
//! `ArrayQueue`): the worker never waits for it. The crypto thread spins, then yields,
//! then parks briefly when idle; the worker wakes it (one `unpark`) only if it parked.
//! If the crypto thread makes no progress for [`STALL_POLLS`] polls while jobs wait (it
//! was descheduled on an oversubscribed host), the worker runs one batch itself — the
//! queue is multi-consumer — so a missing crypto core costs throughput, never a stall.
//!
//! Never allocates per job: queue capacities equal the engine's slot count, so a push
//! that the engine could make never fails for lack of room.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::{Backoff, CachePadded};

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
        if self.pending.is_empty() {
            // The common case: take the whole burst by swapping the (equal-capacity) rings.
            std::mem::swap(&mut self.pending, sq);
        } else {
            // Capacity equals the slot count, so this never reallocates.
            self.pending.extend(sq.drain(..));
        }
        n
    }

    fn dequeue(&mut self, cq: &mut VecDeque<Box<Job>>, max: usize) -> usize {
        let n = max.min(self.pending.len());
        if n == self.pending.len() && cq.is_empty() {
            // The common case: run the whole burst in place and hand it over by swapping
            // the (equal-capacity) rings, instead of moving each job.
            for job in self.pending.iter_mut() {
                job.run_software();
            }
            std::mem::swap(&mut self.pending, cq);
            return n;
        }
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

    fn runs_at_submit(&self) -> bool {
        true
    }
}

// === impl Threaded ===

/// Polls without crypto-thread progress (while jobs wait) before the worker helps.
pub const STALL_POLLS: u32 = 1024;

struct Shared {
    submit: ArrayQueue<Box<Job>>,
    complete: ArrayQueue<Box<Job>>,
    stop: AtomicBool,
    parked: AtomicBool,
    /// Jobs the crypto thread finished, ever (its heartbeat).
    progress: CachePadded<AtomicU64>,
}

/// Jobs run on a dedicated crypto thread.
pub struct Threaded {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    in_device: usize,
    last_progress: u64,
    stalled_polls: u32,
    helped: u64,
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
            progress: CachePadded::new(AtomicU64::new(0)),
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
            last_progress: 0,
            stalled_polls: 0,
            helped: 0,
        })
    }

    /// Jobs the worker ran itself because the crypto thread had stalled.
    pub fn helped(&self) -> u64 {
        self.helped
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
            // The completion queue holds as many jobs as exist, so this push only fails if
            // that invariant is broken; retrying (instead of dropping) never loses a job.
            while let Err(back) = shared.complete.push(job) {
                job = back;
                std::hint::spin_loop();
            }
            done += 1;
        }
        if done > 0 {
            shared.progress.fetch_add(done as u64, Ordering::Release);
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
        if n == 0 && self.in_device > 0 {
            let progress = self.shared.progress.load(Ordering::Acquire);
            if progress != self.last_progress {
                self.last_progress = progress;
                self.stalled_polls = 0;
            } else {
                self.stalled_polls += 1;
                if self.stalled_polls >= STALL_POLLS {
                    // The crypto thread is not running: do one batch here.
                    self.stalled_polls = 0;
                    while n < max {
                        let Some(mut job) = self.shared.submit.pop() else {
                            break;
                        };
                        job.run_software();
                        cq.push_back(job);
                        n += 1;
                    }
                    self.helped += n as u64;
                }
            }
        } else {
            self.stalled_polls = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ContentType, RecordKey};
    use crate::suite::{CipherSuite, TlsVersion, TrafficKeys};

    fn seal_job(key: &Arc<RecordKey>, seq: u64) -> Box<Job> {
        let mut job = Job::new_slot();
        job.key = Some(Arc::clone(key));
        job.seq = seq;
        job.content_type = ContentType::ApplicationData;
        job.input_len = 100;
        job
    }

    /// Driven through the trait (the engine runs its jobs at submission instead), the
    /// inline backend runs at most `max` jobs per `dequeue`, in order, and loses none.
    #[test]
    fn inline_dequeue_runs_at_most_one_batch() {
        let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[1; 16], [2; 12], 0).unwrap();
        let key =
            Arc::new(RecordKey::new(CipherSuite::Aes128Gcm, TlsVersion::Tls13, &keys).unwrap());
        let mut b = Inline::new(8);
        assert!(b.runs_at_submit());
        let mut sq: VecDeque<Box<Job>> = (0..5).map(|i| seal_job(&key, i)).collect();
        assert_eq!(b.enqueue(&mut sq), 5);
        sq.extend((5..8).map(|i| seal_job(&key, i)));
        assert_eq!(b.enqueue(&mut sq), 3);
        let mut cq = VecDeque::with_capacity(8);
        assert_eq!(b.dequeue(&mut cq, 3), 3);
        assert_eq!(b.in_device(), 5);
        assert_eq!(b.dequeue(&mut cq, 8), 5);
        assert_eq!(b.in_device(), 0);
        let seqs: Vec<u64> = cq.iter().map(|j| j.seq).collect();
        assert_eq!(seqs, (0..8).collect::<Vec<_>>());
        assert!(cq
            .iter()
            .all(|j| j.result.is_ok() && j.out_len == 5 + 100 + 17));
    }

    /// A crypto thread that never runs (as on a host where it never gets a CPU): the
    /// worker must still complete every job by itself, after `STALL_POLLS` empty polls.
    #[test]
    fn worker_helps_when_the_crypto_thread_stalls() {
        let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[1; 16], [2; 12], 0).unwrap();
        let key =
            Arc::new(RecordKey::new(CipherSuite::Aes128Gcm, TlsVersion::Tls13, &keys).unwrap());
        let mut t = Threaded {
            shared: Arc::new(Shared {
                submit: ArrayQueue::new(8),
                complete: ArrayQueue::new(8),
                stop: AtomicBool::new(false),
                parked: AtomicBool::new(false),
                progress: CachePadded::new(AtomicU64::new(0)),
            }),
            thread: None,
            in_device: 0,
            last_progress: 0,
            stalled_polls: 0,
            helped: 0,
        };
        let mut sq: VecDeque<Box<Job>> = (0..8).map(|i| seal_job(&key, i)).collect();
        assert_eq!(t.enqueue(&mut sq), 8);
        let mut cq = VecDeque::new();
        let mut polls = 0;
        while cq.len() < 8 {
            t.dequeue(&mut cq, 4);
            polls += 1;
            assert!(polls <= 4 * STALL_POLLS, "worker never helped");
        }
        assert_eq!(t.helped(), 8);
        assert_eq!(t.in_device(), 0);
        assert!(cq.iter().all(|j| j.result.is_ok()));
    }
}
