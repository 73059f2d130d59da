//! Busy time of a poll-mode worker: how much of its wall time went to turns that did
//! work, as opposed to spinning on an empty ring.
//!
//! A spinning worker's CPU time is always one core, whatever the load, so CPU time says
//! nothing about how much more it could carry. What does is the time spent in turns
//! that submitted or completed at least one operation — DPDK's lcore "busyness" and
//! HAProxy's `Idle_pct` are the same idea. A turn is one lap of the engine loop, its
//! `io_uring_enter`/`epoll_wait` included: a turn that did anything counts whole, so the
//! system call that brought the work in is busy time (HAProxy counts its `epoll_wait`
//! as idle even when it returns events — ours is the stricter rule). Time asleep in the
//! kernel (`--idle park|adaptive`) is never busy.
//!
//! Costs one time-stamp counter read per turn (≈ 10 ns here; `rdtsc` on x86-64, the
//! monotonic clock elsewhere), no syscall, no allocation. Ticks become nanoseconds at
//! publication, against the monotonic clock since the meter started (the TSC is
//! invariant on the machines we run: `constant_tsc nonstop_tsc`). Published into the
//! worker's own slot of the [`WorkerStats`] block at most once per millisecond.

use std::time::Instant;

use crate::telemetry::{WorkerCounter as W, WorkerStats};

/// One worker's busy-time meter (owned by its [`super::core::Core`]).
pub(crate) struct BusyMeter {
    origin: Instant,
    origin_ticks: u64,
    /// Start of the current turn.
    lap_start: u64,
    busy_ticks: u64,
    busy_turns: u64,
    events: u64,
    /// Worker clock (ms) of the last publication.
    published_ms: u64,
    /// Nanoseconds per tick, 32.32 fixed point, from the last publication (0: not
    /// calibrated yet).
    ns_per_tick: u64,
}

/// The time-stamp counter (x86-64) or monotonic nanoseconds (elsewhere).
#[inline]
fn ticks(origin: Instant) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = origin;
        // SAFETY: `rdtsc` has no preconditions on x86-64 (it only reads the counter);
        // user-mode execution is allowed unless CR4.TSD is set, which Linux does not do
        // for ordinary processes.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        origin.elapsed().as_nanos() as u64
    }
}

impl BusyMeter {
    pub fn new() -> BusyMeter {
        let origin = Instant::now();
        let t = ticks(origin);
        BusyMeter {
            origin,
            origin_ticks: t,
            lap_start: t,
            busy_ticks: 0,
            busy_turns: 0,
            events: 0,
            published_ms: u64::MAX,
            ns_per_tick: 0,
        }
    }

    /// The time of the current turn's start (ns since the meter started), from the tick
    /// counter this meter reads anyway: the worker's clock without a clock read per
    /// turn. `None` until the first publication calibrated the ticks (≤ 1 ms of
    /// running); after that it is recalibrated against the monotonic clock once per
    /// millisecond, so it cannot drift.
    #[inline]
    pub fn now_ns(&self) -> Option<u64> {
        if self.ns_per_tick == 0 {
            return None;
        }
        let t = self.lap_start.wrapping_sub(self.origin_ticks);
        Some(((t as u128 * self.ns_per_tick as u128) >> 32) as u64)
    }

    /// End of a turn (and start of the next): count it busy when it `worked` (submitted
    /// or completed anything), with the `events` it handled.
    #[inline]
    pub fn lap(&mut self, worked: bool, events: usize) {
        let t = ticks(self.origin);
        if worked {
            self.busy_ticks += t.wrapping_sub(self.lap_start);
            self.busy_turns += 1;
            self.events += events as u64;
        }
        self.lap_start = t;
    }

    /// Back from a wait in the kernel: the time asleep is not busy.
    #[inline]
    pub fn woke(&mut self) {
        self.lap_start = ticks(self.origin);
    }

    /// Busy nanoseconds so far, and the clock (ns since the meter started) they are
    /// measured against.
    pub fn totals(&self) -> (u64, u64) {
        let now_ns = self.origin.elapsed().as_nanos() as u64;
        let span = ticks(self.origin).wrapping_sub(self.origin_ticks);
        if span == 0 {
            return (0, now_ns);
        }
        let ns = (self.busy_ticks as u128 * now_ns as u128 / span as u128) as u64;
        (ns.min(now_ns), now_ns)
    }

    /// Recalibrate ticks → ns against the monotonic clock (one clock read).
    fn calibrate(&mut self) -> u64 {
        let now_ns = self.origin.elapsed().as_nanos() as u64;
        let span = ticks(self.origin).wrapping_sub(self.origin_ticks);
        // Only over a span long enough for the ratio to be exact to well under 1%.
        if span > 0 && now_ns >= 200_000 {
            self.ns_per_tick = ((now_ns as u128) << 32).div_ceil(span as u128) as u64;
        }
        now_ns
    }

    /// Publish into `worker`'s slot, at most once per millisecond of `now_ms`.
    #[inline]
    pub fn publish(&mut self, block: &WorkerStats, worker: usize, now_ms: u64) {
        if now_ms == self.published_ms {
            return;
        }
        self.published_ms = now_ms;
        self.flush(block, worker);
    }

    /// Publish into `worker`'s slot now (a worker's last publication, as it stops).
    pub fn flush(&mut self, block: &WorkerStats, worker: usize) {
        if worker >= block.workers() {
            return;
        }
        self.calibrate();
        let (busy_ns, clock_ns) = self.totals();
        block.set(worker, W::BusyNs, busy_ns);
        block.set(worker, W::ClockNs, clock_ns);
        block.set(worker, W::BusyTurns, self.busy_turns);
        block.set(worker, W::Events, self.events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Busy and idle turns split the clock: a busy turn's time is counted, an idle
    /// turn's and a sleep's are not.
    #[test]
    fn only_working_turns_count() {
        let mut m = BusyMeter::new();
        m.lap(false, 0);
        // ≈ 20 ms of work in one turn.
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        m.lap(true, 3);
        // ≈ 20 ms of nothing, then a sleep.
        std::thread::sleep(Duration::from_millis(20));
        m.lap(false, 0);
        std::thread::sleep(Duration::from_millis(20));
        m.woke();
        m.lap(false, 0);
        let (busy, clock) = m.totals();
        assert!(
            (19_000_000..40_000_000).contains(&busy),
            "busy {busy} ns of {clock}"
        );
        assert!(clock >= 60_000_000, "clock {clock} ns");
        assert_eq!((m.busy_turns, m.events), (1, 3));
        let block = WorkerStats::new(2);
        m.publish(&block, 1, 5);
        assert_eq!(block.get(W::BusyTurns), 1);
        let published = block.get_worker(1, W::BusyNs as usize);
        assert!(
            published.abs_diff(busy) < 1_000_000,
            "{published} vs {busy}"
        );
        // Once per millisecond: a second publication in the same ms changes nothing.
        m.lap(true, 1);
        m.publish(&block, 1, 5);
        assert_eq!(block.get(W::Events), 3);
        m.publish(&block, 1, 6);
        assert_eq!(block.get(W::Events), 4);
    }

    /// The tick clock follows the monotonic clock once calibrated.
    #[test]
    fn tick_clock_follows_the_monotonic_clock() {
        let mut m = BusyMeter::new();
        assert_eq!(
            m.now_ns(),
            None,
            "not calibrated before the first publication"
        );
        std::thread::sleep(Duration::from_millis(5));
        let block = WorkerStats::new(1);
        m.publish(&block, 0, 5);
        std::thread::sleep(Duration::from_millis(30));
        m.lap(false, 0);
        let before = m.origin.elapsed().as_nanos() as u64;
        let ns = m.now_ns().expect("calibrated");
        // Within 10% of the real elapsed time (the ratio came from a 5 ms span).
        assert!(
            ns.abs_diff(before) < before / 10,
            "tick clock {ns} ns vs monotonic {before} ns"
        );
    }
}
