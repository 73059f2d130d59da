//! Slow start (Envoy's `slow_start_config`, Istio's `warmup`): an endpoint that joins a
//! `round_robin` or `least_request` cluster — a new endpoint in an apply, a new address
//! in a DNS answer — or, with active health checks, turns healthy again, takes
//! `weight × max(min_weight_percent, time_factor^(1/aggression))` of its share during
//! the window, where `time_factor = max(seconds since it joined, 1) / window seconds`
//! (Envoy's formula), and its full weight after.
//!
//! Design: the control plane owns the clock. Each endpoint's [`EndpointHealth`] (which
//! survives table swaps, keyed by cluster and address) records when its slow start began;
//! at every compile and every health tick (20 ms) the control plane computes each
//! endpoint's scale, divides by the largest scale in the cluster (only ratios matter, and
//! an all-new cluster then runs at full speed) and publishes it as a relaxed atomic next
//! to the endpoint's health flags, with the cluster's count of scaled endpoints. A worker
//! reads the count (one load, as it reads the unusable count); only while it is not 0
//! does a pick read the scales, and thins the balancer's choices by them: a choice is
//! kept with probability `scale / FULL` (rejection sampling, which leaves each endpoint
//! exactly `weight × scale` of the traffic), at most [`MAX_DRAWS`] draws, then the
//! largest scale drawn wins. So the hot path never reads a clock, never locks, never
//! allocates, and a cluster without slow start pays nothing. The weights move in steps
//! of one tick (20 ms), far finer than any window worth configuring.
//!
//! Never touches a socket; workers only read [`EndpointHealth::slow_start_scale`].

use super::health::EndpointHealth;

/// A scale of 1: full weight. Scales are fixed point in 1/65536.
pub const FULL: u32 = 1 << 16;

/// Candidates a slow-start pick draws before it settles for the best of them.
pub const MAX_DRAWS: u32 = 16;

/// A cluster's slow-start settings, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window_ms: u64,
    /// > 0 (validated): 1 ramps linearly, larger ramps faster.
    pub aggression: f64,
    /// The smallest share of its weight an endpoint in slow start gets, 0..=1.
    pub min_weight: f64,
}

impl SlowStart {
    /// From a validated `slow_start_config` (Envoy's defaults: aggression 1.0, 10%).
    pub fn of(c: &crate::config::SlowStartConfig) -> Option<SlowStart> {
        let window = c.slow_start_window?;
        Some(SlowStart {
            window_ms: (window.as_millis() as u64).max(1),
            aggression: c.aggression.as_ref().map_or(1.0, |a| a.default_value),
            min_weight: c.min_weight_percent.map_or(0.1, |p| p.value / 100.0),
        })
    }

    /// The weight scale of an endpoint `age_ms` into its slow start ([`FULL`] once the
    /// window has passed).
    pub fn scale(&self, age_ms: u64) -> u32 {
        if age_ms >= self.window_ms {
            return FULL;
        }
        // Envoy counts whole seconds from 1: the first second is worth one.
        let t = (age_ms.max(1000) as f64 / self.window_ms as f64).min(1.0);
        let f = t.powf(1.0 / self.aggression).max(self.min_weight).min(1.0);
        ((f * f64::from(FULL)) as u32).clamp(1, FULL)
    }

    /// Compute and publish the scales of `endpoints` at `now` ([`super::health::now_ms`]),
    /// stamping the join time of endpoints seen for the first time. Returns how many
    /// are scaled down (what `ClusterHealth::slow_starting` publishes). Control plane
    /// only.
    pub fn refresh<'a>(
        &self,
        endpoints: impl Iterator<Item = &'a EndpointHealth> + Clone,
        now: u64,
    ) -> u32 {
        let scales: Vec<u32> = endpoints
            .clone()
            .map(|h| {
                h.stamp_joined(now);
                self.scale(now.saturating_sub(h.slow_start_since_ms()))
            })
            .collect();
        let top = scales.iter().copied().max().unwrap_or(FULL).max(1);
        let mut scaled = 0;
        for (h, s) in endpoints.zip(scales) {
            // Relative to the largest: an all-new cluster balances at full speed.
            let rel = ((u64::from(s) * u64::from(FULL)) / u64::from(top)) as u32;
            if rel < FULL {
                scaled += 1;
            }
            h.set_slow_start_scale(rel);
        }
        scaled
    }
}

/// Slow start off: every endpoint at full weight (a cluster whose config dropped it).
pub fn clear<'a>(endpoints: impl Iterator<Item = &'a EndpointHealth>, now: u64) {
    for h in endpoints {
        h.stamp_joined(now);
        h.set_slow_start_scale(FULL);
    }
}

/// Whether a draw with scale `s` is kept, given a uniform random `r`.
#[inline]
pub fn keep(s: u32, r: u32) -> bool {
    s >= FULL || (r >> 16) < s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ss(window_s: u64, aggression: f64, min_pct: f64) -> SlowStart {
        SlowStart {
            window_ms: window_s * 1000,
            aggression,
            min_weight: min_pct / 100.0,
        }
    }

    fn f(s: u32) -> f64 {
        f64::from(s) / f64::from(FULL)
    }

    #[test]
    fn envoy_formula() {
        // Linear: 5 s into a 10 s window is half weight; the first second counts as one.
        let lin = ss(10, 1.0, 10.0);
        assert!((f(lin.scale(5_000)) - 0.5).abs() < 1e-4);
        assert!((f(lin.scale(0)) - 0.1).abs() < 1e-4);
        assert!((f(lin.scale(999)) - 0.1).abs() < 1e-4);
        assert_eq!(lin.scale(10_000), FULL);
        assert_eq!(lin.scale(60_000), FULL);
        // The floor: min_weight_percent.
        let floor = ss(100, 1.0, 25.0);
        assert!((f(floor.scale(10_000)) - 0.25).abs() < 1e-4);
        // Aggression 2: t^(1/2), faster early on.
        let fast = ss(100, 2.0, 0.0);
        assert!((f(fast.scale(25_000)) - 0.5).abs() < 1e-4);
        // Aggression 0.5: t^2, slower.
        let slow = ss(100, 0.5, 0.0);
        assert!((f(slow.scale(50_000)) - 0.25).abs() < 1e-4);
        // Never 0, whatever the settings.
        assert!(ss(1000, 0.01, 0.0).scale(1) >= 1);
    }

    #[test]
    fn scales_are_relative_to_the_newest_and_ramp() {
        let hs: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
        let s = ss(10, 1.0, 10.0);
        // All join together: all at the same scale, so none is held back.
        assert_eq!(s.refresh(hs.iter(), 100_000), 0);
        assert!(hs.iter().all(|h| h.slow_start_scale() == FULL));
        // The window passes; a fourth joins: only it is scaled (10% of the others).
        let late = EndpointHealth::default();
        let all = || hs.iter().chain(std::iter::once(&late));
        assert_eq!(s.refresh(all(), 120_000), 1);
        assert!((f(late.slow_start_scale()) - 0.1).abs() < 1e-3);
        assert_eq!(s.refresh(all(), 125_000), 1);
        assert!((f(late.slow_start_scale()) - 0.5).abs() < 1e-3);
        assert_eq!(s.refresh(all(), 130_000), 0);
        assert_eq!(late.slow_start_scale(), FULL);
        // Turned healthy again: ramps anew.
        late.restart_slow_start(140_000);
        assert_eq!(s.refresh(all(), 142_000), 1);
        assert!((f(late.slow_start_scale()) - 0.2).abs() < 1e-3);
        clear(all(), 143_000);
        assert_eq!(late.slow_start_scale(), FULL);
    }

    #[test]
    fn keep_thins_by_scale() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u32
        };
        let n = 100_000;
        let kept = (0..n).filter(|_| keep(FULL / 4, next())).count();
        assert!((kept as f64 / n as f64 - 0.25).abs() < 0.01, "{kept}");
        assert!((0..100).all(|_| keep(FULL, next())));
    }
}
