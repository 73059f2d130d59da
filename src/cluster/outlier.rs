//! Passive outlier detection with Envoy's semantics, decided on the control plane.
//!
//! Workers count consecutive errors per endpoint ([`super::health::EndpointHealth::record`]);
//! the control plane's health tick (every [`TICK`]) calls [`sweep`] for each cluster that
//! has an [`OutlierPolicy`]. Owns the decisions only: never runs on a worker, never
//! blocks, and never writes a counter a worker writes except to clear it on ejection.
//!
//! Semantics (Envoy `outlier_detection`, Istio `outlierDetection`):
//! - an endpoint whose consecutive 5xx count reaches `consecutive_5xx` (default 5), or
//!   whose consecutive gateway errors (502/503/504, connect failures, resets and timeouts)
//!   reach `consecutive_gateway_failure` (default 5), is detected at the next tick —
//!   within [`TICK`], where Envoy posts the same decision to its main thread — and
//!   ejected with the chance `enforcing_consecutive_5xx` (default 100%) or
//!   `enforcing_consecutive_gateway_failure` (default **0%**, as in Envoy: set it to 100
//!   to eject on gateway errors; Istio's `consecutiveGatewayErrors` does);
//! - it stays out for `base_ejection_time` × the times it has been ejected, capped at
//!   `max_ejection_time` (default 300 s, or `base_ejection_time` when longer);
//! - it returns at the first `interval` tick after its time is up; each interval an
//!   endpoint spends un-ejected lowers its ejection multiplier by one;
//! - at most `max_ejection_percent` (default 10) of the cluster is ejected at once, but one
//!   endpoint can always be (Envoy: "will eject at least one host regardless of the
//!   value"); refused ejections are counted (`ejections_overflow`).
//!
//! Not implemented (refused by name when configured): success-rate and
//! failure-percentage detection, split local/external error counting.

use std::time::Duration;

use super::health::{ClusterHealth, EndpointHealth, EJECTED};
use crate::config::OutlierDetection;

/// How often the control plane looks at the error counters.
pub const TICK: Duration = Duration::from_millis(20);

/// A cluster's compiled outlier-detection settings (all times in milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 0: this kind of detection is off.
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u32,
    /// Percent chance that a detected outlier is ejected, per kind.
    pub enforcing_5xx: u32,
    pub enforcing_gateway: u32,
}

impl OutlierPolicy {
    /// Envoy's defaults for every field the config leaves out.
    pub fn from_config(o: &OutlierDetection) -> OutlierPolicy {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let base = o.base_ejection_time.map_or(30_000, ms);
        OutlierPolicy {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
            consecutive_gateway: o.consecutive_gateway_failure.unwrap_or(5),
            interval_ms: o.interval.map_or(10_000, ms).max(1),
            base_ejection_ms: base,
            max_ejection_ms: o.max_ejection_time.map_or(300_000, ms).max(base),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
            enforcing_5xx: o.enforcing_consecutive_5xx.unwrap_or(100).min(100),
            enforcing_gateway: o
                .enforcing_consecutive_gateway_failure
                .unwrap_or(0)
                .min(100),
        }
    }

    /// Whether `e` crossed a threshold, and the enforcement chance (percent) of the
    /// strongest kind it crossed.
    fn detected(&self, e: &EndpointHealth) -> Option<u32> {
        let five = self.consecutive_5xx > 0 && e.consecutive_5xx() >= self.consecutive_5xx;
        let gw =
            self.consecutive_gateway > 0 && e.consecutive_gateway() >= self.consecutive_gateway;
        match (five, gw) {
            (false, false) => None,
            (true, false) => Some(self.enforcing_5xx),
            (false, true) => Some(self.enforcing_gateway),
            (true, true) => Some(self.enforcing_5xx.max(self.enforcing_gateway)),
        }
    }
}

/// A percent chance (control plane only; not for anything secret).
fn chance(percent: u32) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if percent >= 100 {
        return true;
    }
    let r = super::maglev::mix64(super::health::now_ms() ^ SEQ.fetch_add(1, Relaxed) << 20);
    r % 100 < u64::from(percent)
}

/// One health tick for one cluster at `now` ([`super::health::now_ms`]): un-eject at
/// interval ticks, then eject endpoints over a threshold while the cap allows.
pub fn sweep<'a>(
    p: &OutlierPolicy,
    cluster: &ClusterHealth,
    endpoints: impl Iterator<Item = &'a EndpointHealth> + Clone,
    now: u64,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let next = cluster.next_interval_ms.load(Relaxed);
    if next == 0 {
        cluster
            .next_interval_ms
            .store(now.saturating_add(p.interval_ms), Relaxed);
    } else if now >= next {
        cluster
            .next_interval_ms
            .store(now.saturating_add(p.interval_ms), Relaxed);
        for e in endpoints.clone() {
            if e.flags() & EJECTED != 0 {
                if now >= e.ejected_until_ms() {
                    e.uneject(cluster);
                }
            } else {
                e.forgive_one();
            }
        }
    }
    let total = endpoints.clone().count() as u64;
    let mut ejected = endpoints
        .clone()
        .filter(|e| e.flags() & EJECTED != 0)
        .count() as u64;
    for e in endpoints {
        if e.flags() & EJECTED != 0 {
            continue;
        }
        let Some(enforce) = p.detected(e) else {
            continue;
        };
        if !chance(enforce) {
            // Detected, not enforced (Envoy's `enforcing_*`): start counting again.
            e.clear_counters();
            continue;
        }
        let allowed =
            ejected == 0 || (ejected + 1) * 100 <= total * u64::from(p.max_ejection_percent);
        if !allowed {
            cluster.ejections_overflow.fetch_add(1, Relaxed);
            // Counted once per crossing: start the count again.
            e.clear_counters();
            continue;
        }
        e.eject(cluster, now, p.base_ejection_ms, p.max_ejection_ms);
        ejected += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::super::health::Outcome;
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy::from_config(&OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_failure: Some(2),
            interval: Some(Duration::from_millis(100)),
            base_ejection_time: Some(Duration::from_millis(1000)),
            max_ejection_percent: Some(50),
            enforcing_consecutive_gateway_failure: Some(100),
            ..OutlierDetection::default()
        })
    }

    #[test]
    fn defaults_are_envoys() {
        let p = OutlierPolicy::from_config(&OutlierDetection::default());
        assert_eq!(
            p,
            OutlierPolicy {
                consecutive_5xx: 5,
                consecutive_gateway: 5,
                interval_ms: 10_000,
                base_ejection_ms: 30_000,
                max_ejection_ms: 300_000,
                max_ejection_percent: 10,
                enforcing_5xx: 100,
                enforcing_gateway: 0,
            }
        );
    }

    #[test]
    fn gateway_failures_are_enforced_only_when_asked_as_in_envoy() {
        let c = ClusterHealth::default();
        let e = [EndpointHealth::default(), EndpointHealth::default()];
        let quiet = OutlierPolicy::from_config(&OutlierDetection {
            consecutive_5xx: Some(0),
            consecutive_gateway_failure: Some(2),
            max_ejection_percent: Some(100),
            ..OutlierDetection::default()
        });
        for _ in 0..2 {
            e[0].record(Outcome::LocalFailure);
        }
        sweep(&quiet, &c, e.iter(), 1);
        assert!(e[0].usable(), "detected, enforced at 0%");
        assert_eq!(e[0].consecutive_gateway(), 0, "counting starts again");
        let loud = OutlierPolicy {
            enforcing_gateway: 100,
            ..quiet
        };
        for _ in 0..2 {
            e[0].record(Outcome::LocalFailure);
        }
        sweep(&loud, &c, e.iter(), 2);
        assert!(!e[0].usable());
    }

    #[test]
    fn consecutive_errors_eject_and_time_brings_back() {
        let p = policy();
        let c = ClusterHealth::default();
        let eps: Vec<EndpointHealth> = (0..4).map(|_| EndpointHealth::default()).collect();
        sweep(&p, &c, eps.iter(), 1); // starts the interval clock
        for _ in 0..2 {
            eps[0].record(Outcome::Status(500));
        }
        eps[0].record(Outcome::Status(200)); // breaks the run
        eps[0].record(Outcome::Status(500));
        sweep(&p, &c, eps.iter(), 10);
        assert!(eps[0].usable(), "not 3 in a row");
        eps[0].record(Outcome::Status(500));
        eps[0].record(Outcome::Status(500));
        sweep(&p, &c, eps.iter(), 20);
        assert!(!eps[0].usable());
        assert_eq!(c.unusable(), 1);
        assert_eq!(eps[0].ejected_until_ms(), 1020);
        // Gateway errors: two connect failures are enough.
        eps[1].record(Outcome::LocalFailure);
        eps[1].record(Outcome::LocalFailure);
        sweep(&p, &c, eps.iter(), 30);
        assert!(!eps[1].usable());
        // 50% of 4 = 2 ejected at most: the third is refused and counted.
        for _ in 0..3 {
            eps[2].record(Outcome::Status(503));
        }
        sweep(&p, &c, eps.iter(), 40);
        assert!(eps[2].usable());
        assert_eq!(c.ejections_overflow(), 1);
        assert_eq!(eps[2].consecutive_5xx(), 0);
        // Interval ticks: 101 (first sweep after it: 500), then 600 (1010), then 1110.
        sweep(&p, &c, eps.iter(), 500);
        sweep(&p, &c, eps.iter(), 1010);
        assert!(!eps[0].usable());
        // Time is up at 1020, but they return only at the next interval tick.
        sweep(&p, &c, eps.iter(), 1025);
        assert!(!eps[0].usable());
        sweep(&p, &c, eps.iter(), 1115);
        assert!(eps[0].usable() && eps[1].usable());
        assert_eq!(c.unusable(), 0);
        // Ejected again: twice the base.
        for _ in 0..3 {
            eps[0].record(Outcome::LocalFailure);
        }
        sweep(&p, &c, eps.iter(), 1140);
        assert_eq!(eps[0].ejected_until_ms(), 1140 + 2000);
        assert_eq!(eps[0].times_ejected(), 2);
    }

    #[test]
    fn one_endpoint_can_always_be_ejected() {
        let mut p = policy();
        p.max_ejection_percent = 0;
        let c = ClusterHealth::default();
        let eps: Vec<EndpointHealth> = (0..2).map(|_| EndpointHealth::default()).collect();
        for e in &eps {
            for _ in 0..3 {
                e.record(Outcome::Status(500));
            }
        }
        sweep(&p, &c, eps.iter(), 5);
        assert_eq!(eps.iter().filter(|e| !e.usable()).count(), 1);
    }

    #[test]
    fn the_multiplier_decays_while_healthy() {
        let p = policy();
        let c = ClusterHealth::default();
        let e = [EndpointHealth::default()];
        sweep(&p, &c, e.iter(), 1);
        for _ in 0..3 {
            e[0].record(Outcome::Status(502));
        }
        sweep(&p, &c, e.iter(), 2);
        assert_eq!(e[0].times_ejected(), 1);
        sweep(&p, &c, e.iter(), 1200); // back
        assert!(e[0].usable());
        sweep(&p, &c, e.iter(), 1300); // one healthy interval
        assert_eq!(e[0].times_ejected(), 0);
    }
}
