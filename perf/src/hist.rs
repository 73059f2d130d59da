//! Latency arithmetic: the clock, the open-loop schedule that corrects coordinated
//! omission, and the summaries read out of an HdrHistogram.
//!
//! Owns every number a latency is made of, so it can be checked against hand-computed
//! cases. Never allocates on the recording path: a histogram is created once per run with
//! bounds wide enough (1 ns .. 60 s) that `record` never resizes it.
//!
//! Invariants: times are nanoseconds since one [`Clock`]'s origin (`u64`, monotonic);
//! a latency is always "completion − intended send time", where the intended time is the
//! actual send time in closed loop and the schedule's slot in open loop (wrk2's rule), so a
//! stalled response is charged to every request that should have been sent meanwhile.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest and highest recordable latency (ns) and the precision: 3 significant digits,
/// i.e. 1 ns resolution below 2 µs and ≤ 0.1% error above.
pub const LOWEST_NS: u64 = 1;
pub const HIGHEST_NS: u64 = 60_000_000_000;
pub const SIGFIG: u8 = 3;

/// A fresh latency histogram (values in ns).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's rules (low ≥ 1, high ≥ 2·low,
    // sigfig ≤ 5), so creation cannot fail.
    Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGFIG).expect("constant valid bounds")
}

/// Monotonic nanoseconds since an origin taken once per run.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    #[inline]
    pub fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years: the truncation cannot bite.
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The open-loop send schedule of one connection (wrk2's model): request `k` is due at
/// `start + phase + k·period`, whether or not the previous response is back. A request
/// sent late keeps its intended time, so its latency includes the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    first_ns: u64,
    period_ns: u64,
    next: u64,
}

impl Schedule {
    /// `connections` connections share `rate` requests/s; connection `index` is offset by
    /// `index/connections` of a period so the sends are spread, not bunched.
    pub fn for_connection(start_ns: u64, rate: f64, connections: usize, index: usize) -> Schedule {
        let per_conn_rate = rate / connections.max(1) as f64;
        let period_ns = (1e9 / per_conn_rate).round().max(1.0) as u64;
        let phase = period_ns * index as u64 / connections.max(1) as u64;
        Schedule {
            first_ns: start_ns + phase,
            period_ns,
            next: 0,
        }
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// Intended send time of the next request.
    #[inline]
    pub fn next_intended(&self) -> u64 {
        self.first_ns + self.next * self.period_ns
    }

    /// Take the next slot: returns its intended time.
    #[inline]
    pub fn take(&mut self) -> u64 {
        let t = self.next_intended();
        self.next += 1;
        t
    }
}

/// Latency of one request: completion − intended send time (0 if the clock says the reply
/// came first, which only a broken clock can do).
#[inline]
pub fn latency_ns(intended_ns: u64, completed_ns: u64) -> u64 {
    completed_ns.saturating_sub(intended_ns)
}

/// The percentiles every summary carries (in percent).
pub const PERCENTILES: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// A latency distribution read out of a histogram, in nanoseconds.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub stdev_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// `[percent, ns]` for each of [`PERCENTILES`].
    pub percentiles: Vec<(f64, u64)>,
    /// The whole distribution as HdrHistogram plots it: `[percent, ns]` at log-spaced
    /// steps towards 100% (5 ticks per halving of the remaining distance), ending at max.
    pub distribution: Vec<(f64, u64)>,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        // `99.9 / 100.0` is 0.99900000000000001: without the nudge, 999 of 1000 samples
        // would round up to the 1000th and p99.9 would read as the max.
        let at = |p: f64| h.value_at_quantile((p / 100.0 - 1e-12).clamp(0.0, 1.0));
        let percentiles = PERCENTILES.iter().map(|&p| (p, at(p))).collect();
        let mut distribution: Vec<(f64, u64)> = Vec::new();
        for v in h.iter_quantiles(5) {
            let p = v.quantile_iterated_to() * 100.0;
            let ns = h.highest_equivalent(v.value_iterated_to());
            if distribution.last().is_some_and(|&(lp, _)| lp >= p) {
                continue;
            }
            distribution.push((p, ns.min(h.max())));
        }
        Summary {
            count: h.len(),
            min_ns: h.min(),
            mean_ns: h.mean(),
            stdev_ns: h.stdev(),
            p50_ns: at(50.0),
            p99_ns: at(99.0),
            p999_ns: at(99.9),
            max_ns: h.max(),
            percentiles,
            distribution,
        }
    }

    /// Value at one of the standard percentiles (None if it is not one of them).
    pub fn at(&self, percent: f64) -> Option<u64> {
        self.percentiles
            .iter()
            .find(|(p, _)| (p - percent).abs() < 1e-9)
            .map(|&(_, v)| v)
    }
}

/// Median of a list (mean of the middle two for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Requests per second over a window.
pub fn rate(count: u64, window: Duration) -> f64 {
    let s = window.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        count as f64 / s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_connections_and_steps_by_period() {
        // 4 connections sharing 40_000 req/s: 10_000 req/s each, period 100 µs,
        // connection 1 offset by a quarter period.
        let mut s = Schedule::for_connection(1_000, 40_000.0, 4, 1);
        assert_eq!(s.period_ns(), 100_000);
        assert_eq!(s.take(), 1_000 + 25_000);
        assert_eq!(s.take(), 1_000 + 125_000);
        assert_eq!(s.next_intended(), 1_000 + 225_000);
    }

    #[test]
    fn coordinated_omission_is_charged_from_the_intended_time() {
        // One connection at 10_000 req/s (period 100 µs). Request 0 is sent at 0 and its
        // reply stalls until 250 µs. Request 1 was due at 100 µs but can only go out at
        // 250 µs; its reply takes 10 µs. Request 2 was due at 200 µs, goes at 260 µs.
        let mut s = Schedule::for_connection(0, 10_000.0, 1, 0);
        let t0 = s.take();
        assert_eq!(latency_ns(t0, 250_000), 250_000);
        let t1 = s.take();
        assert_eq!(t1, 100_000);
        // Measured from the actual send (250 µs) it would be 10 µs: the omission.
        assert_eq!(latency_ns(t1, 260_000), 160_000);
        let t2 = s.take();
        assert_eq!(latency_ns(t2, 270_000), 70_000);
        // Back on schedule: request 3 due at 300 µs, sent then, back at 310 µs.
        let t3 = s.take();
        assert_eq!(latency_ns(t3, 310_000), 10_000);

        let mut h = new_histogram();
        for l in [250_000, 160_000, 70_000, 10_000] {
            h.record(l).unwrap();
        }
        let sum = Summary::of(&h);
        assert_eq!(sum.count, 4);
        // 3 significant digits: every one of these values is exactly representable.
        assert_eq!(sum.min_ns, 10_000);
        assert_eq!(sum.max_ns, h.highest_equivalent(250_000));
        assert!(h.equivalent(sum.p50_ns, 70_000), "p50 = {}", sum.p50_ns);
        assert!((sum.mean_ns - 122_500.0).abs() / 122_500.0 < 0.001);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 µs, once each: p50 = 500 µs, p99 = 990 µs, p99.9 = 999 µs, max = 1000 µs,
        // each within the histogram's 0.1% precision.
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = Summary::of(&h);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001;
        assert!(close(s.p50_ns, 500_000), "{}", s.p50_ns);
        assert!(close(s.p99_ns, 990_000), "{}", s.p99_ns);
        assert!(close(s.p999_ns, 999_000), "{}", s.p999_ns);
        assert!(close(s.max_ns, 1_000_000), "{}", s.max_ns);
        assert_eq!(s.at(99.0), Some(s.p99_ns));
        assert_eq!(s.at(42.0), None);
        // The distribution climbs monotonically and ends at 100% = max.
        assert!(s
            .distribution
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let last = s.distribution.last().unwrap();
        assert_eq!(last.0, 100.0);
        assert_eq!(last.1, s.max_ns);
    }

    #[test]
    fn nanosecond_resolution_at_the_low_end() {
        let mut h = new_histogram();
        h.record(1_234).unwrap();
        assert_eq!(h.value_at_quantile(0.5), 1_234);
        // Beyond the top bound a value saturates instead of failing.
        h.saturating_record(u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn empty_histogram_gives_an_empty_summary() {
        let s = Summary::of(&new_histogram());
        assert_eq!(s.count, 0);
        assert!(s.distribution.is_empty());
    }

    #[test]
    fn median_and_rate() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(rate(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(rate(5, Duration::ZERO), 0.0);
    }
}
