//! How load spreads over a cluster's priority levels and localities while endpoints are
//! unhealthy: Envoy's priority load, panic threshold and locality-weighted balancing,
//! computed on the control plane into a [`LoadPlan`] that picks read.
//!
//! Owns the arithmetic only; never runs on a worker and never allocates there (a worker
//! reads a published plan through an `ArcSwap` load, and only while some endpoint of
//! its cluster is unusable — with everything usable, level 0 takes all traffic and the
//! static locality weights apply, which needs no plan).
//!
//! Semantics (Envoy, `arch_overview/upstream/load_balancing/{priority,panic_threshold,
//! locality_weight}`; overprovisioning factor 1.4):
//! - a level's availability is `min(100, 140 × usable / total)` percent (host counts);
//! - the normalized total availability is `min(100, Σ availability)`; each level gets
//!   `availability × 100 / normalized total` percent of the traffic, in order, until 100
//!   is handed out; the rounding remainder goes to the first level with any availability;
//!   with nothing available anywhere, level 0 takes all of it;
//! - panic: only when the normalized total is below 100, a level whose usable share is
//!   below `healthy_panic_threshold` (default 50%; 0 disables panic) balances over all
//!   of its endpoints, usable or not;
//! - locality weighting (inside a level that is not in panic): a locality's effective
//!   weight is its configured weight × its availability (same formula); the locality is
//!   drawn by effective weight.
//!
//! Invariant: a plan has one entry per level of the table it was computed for, every
//! `level_cumulative` ends at 100, and a level's `locality_cumulative` is empty or has
//! one entry per locality of that level.

/// Envoy's default overprovisioning factor, in percent.
pub const OVERPROVISIONING: u64 = 140;

/// Envoy's default `healthy_panic_threshold`, in percent.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// The published spread of a cluster's traffic under its current health.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadPlan {
    /// Cumulative percent of requests per priority level (the last is 100).
    pub level_cumulative: Box<[u32]>,
    /// Per level: balance over every endpoint of the level (panic mode).
    pub panic: Box<[bool]>,
    /// Per level: cumulative effective locality weights (empty: the level has no
    /// locality weighting). All zero means no locality is available: the level's
    /// static weights are used and the pick skips unusable endpoints.
    pub locality_cumulative: Box<[Box<[u32]>]>,
}

/// Usable and total endpoints of one set (a level or a locality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub usable: u32,
    pub total: u32,
}

impl Count {
    /// Envoy's availability: `min(100, 1.4 × usable share)`, percent.
    pub fn availability(self) -> u32 {
        if self.total == 0 {
            return 0;
        }
        (OVERPROVISIONING * u64::from(self.usable) / u64::from(self.total)).min(100) as u32
    }

    /// Whether the usable share is below the panic threshold (percent; 0: never).
    pub fn in_panic(self, threshold: f64) -> bool {
        if threshold <= 0.0 || self.total == 0 {
            return false;
        }
        100.0 * f64::from(self.usable) / f64::from(self.total) < threshold
    }
}

/// Each level's percent of the traffic and whether it is in panic, from each level's
/// counts (lowest priority number first).
pub fn priority_load(levels: &[Count], panic_threshold: f64) -> (Vec<u32>, Vec<bool>) {
    let avail: Vec<u32> = levels.iter().map(|c| c.availability()).collect();
    let normalized = avail.iter().sum::<u32>().min(100);
    let mut load = vec![0u32; levels.len()];
    if levels.is_empty() {
        return (load, Vec::new());
    }
    let mut left = 100u32;
    for (l, &a) in load.iter_mut().zip(&avail) {
        *l = (a * 100).checked_div(normalized).unwrap_or(0).min(left);
        left -= *l;
    }
    // The rounding remainder (all of it when nothing is available) goes to the first
    // level with any availability, or level 0.
    let first = avail.iter().position(|&a| a > 0).unwrap_or(0);
    load[first] += left;
    let panic = levels
        .iter()
        .map(|c| normalized < 100 && c.in_panic(panic_threshold))
        .collect();
    (load, panic)
}

/// Cumulative effective locality weights: configured weight × availability.
pub fn locality_weights(weights: &[u32], counts: &[Count]) -> Box<[u32]> {
    let mut sum = 0u32;
    weights
        .iter()
        .zip(counts)
        .map(|(&w, c)| {
            sum = sum.saturating_add(w.saturating_mul(c.availability()));
            sum
        })
        .collect()
}

/// Running sums of `v`.
pub fn running(v: &[u32]) -> Box<[u32]> {
    let mut sum = 0u32;
    v.iter()
        .map(|&x| {
            sum = sum.saturating_add(x);
            sum
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(usable: u32, total: u32) -> Count {
        Count { usable, total }
    }

    #[test]
    fn availability_is_overprovisioned_and_capped() {
        assert_eq!(c(10, 10).availability(), 100);
        assert_eq!(c(8, 10).availability(), 100, "80% × 1.4 > 100");
        assert_eq!(c(7, 10).availability(), 98);
        assert_eq!(c(5, 10).availability(), 70);
        assert_eq!(c(0, 10).availability(), 0);
        assert_eq!(c(0, 0).availability(), 0);
    }

    /// The table of Envoy's priority-levels page: two levels, P=1 fully healthy.
    #[test]
    fn two_levels_split_as_envoy_documents() {
        let split = |p0: u32| priority_load(&[c(p0, 100), c(10, 10)], 50.0).0;
        assert_eq!(split(100), [100, 0]);
        assert_eq!(split(72), [100, 0]);
        assert_eq!(split(71), [99, 1]);
        assert_eq!(split(50), [70, 30]);
        assert_eq!(split(25), [35, 65]);
        assert_eq!(split(0), [0, 100]);
    }

    /// Normalized total below 100: loads scale up to 100, and a level under the panic
    /// threshold balances over all its endpoints (Envoy's panic-threshold examples).
    #[test]
    fn panic_only_when_the_levels_together_fall_short() {
        // P0 20% healthy, P1 20%: availabilities 28 + 28 = 56 → 50/50, both in panic.
        let (load, panic) = priority_load(&[c(2, 10), c(2, 10)], 50.0);
        assert_eq!(load, [50, 50]);
        assert_eq!(panic, [true, true]);
        // P0 40% healthy, P1 100%: total ≥ 100 → no panic though P0 < 50%.
        let (load, panic) = priority_load(&[c(4, 10), c(10, 10)], 50.0);
        assert_eq!(load, [56, 44]);
        assert_eq!(panic, [false, false]);
        // One level at 40%: it is alone and short → panic; at 50%: not (50 < 50 fails).
        assert_eq!(priority_load(&[c(4, 10)], 50.0), (vec![100], vec![true]));
        assert_eq!(priority_load(&[c(5, 10)], 50.0), (vec![100], vec![false]));
        // Threshold 0 disables panic; a lower threshold panics later.
        assert_eq!(priority_load(&[c(1, 10)], 0.0).1, [false]);
        assert_eq!(priority_load(&[c(4, 10)], 30.0).1, [false]);
        assert_eq!(priority_load(&[c(2, 10)], 30.0).1, [true]);
    }

    #[test]
    fn nothing_available_sends_everything_to_level_0_in_panic() {
        let (load, panic) = priority_load(&[c(0, 3), c(0, 2)], 50.0);
        assert_eq!(load, [100, 0]);
        assert_eq!(panic, [true, true]);
    }

    #[test]
    fn rounding_remainder_goes_to_the_first_available_level() {
        // 3 levels at 1/3 usable each: availability 46 each, total 100 (capped).
        let (load, _) = priority_load(&[c(1, 3), c(1, 3), c(1, 3)], 50.0);
        assert_eq!(load.iter().sum::<u32>(), 100);
        assert_eq!(load, [46, 46, 8]);
        let (load, _) = priority_load(&[c(0, 3), c(1, 4), c(1, 4)], 50.0);
        assert_eq!(load.iter().sum::<u32>(), 100);
        assert_eq!(load, [0, 50, 50]);
    }

    /// The table of Envoy's locality-weight page: X weight 1, Y weight 2, Y healthy.
    #[test]
    fn locality_weights_follow_availability() {
        let share_x = |x: u32| {
            let cum = locality_weights(&[1, 2], &[c(x, 100), c(10, 10)]);
            100 * cum[0] / cum[1]
        };
        assert_eq!(share_x(100), 33);
        assert_eq!(share_x(70), 32, "98% available");
        assert_eq!(share_x(50), 25, "Envoy's table rounds 25.9 up to 26");
        assert_eq!(share_x(25), 14, "Envoy: 15 (35/235 = 14.9)");
        assert_eq!(share_x(0), 0);
        assert_eq!(running(&[1, 2, 3]).to_vec(), [1, 3, 6]);
    }
}
