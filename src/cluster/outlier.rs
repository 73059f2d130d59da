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
//!   value"; `always_eject_one_host: false` makes the cap hold for it too, as Envoy ≥
//!   1.31 does by default); refused ejections are counted (`ejections_overflow`);
//! - each ejection lasts a random 0..=`max_ejection_time_jitter` longer;
//! - with active health checks, a passing check ends an ejection early
//!   (`successful_active_health_check_uneject_host`, default true; see
//!   [`super::active`]).
//!
//! - success rate, at each interval tick: from the volumes the workers counted per
//!   endpoint since the previous tick (`rq_success`/`rq_error`, per-worker slots summed
//!   here), the endpoints with at least `success_rate_request_volume` requests are
//!   compared once there are `success_rate_minimum_hosts` of them; one whose success
//!   rate is below mean − `success_rate_stdev_factor`/1000 × stdev (population) is
//!   ejected with the chance `enforcing_success_rate` (default 100%);
//! - failure percentage, at the same tick: with `failure_percentage_minimum_hosts`
//!   endpoints having `failure_percentage_request_volume` requests, one whose failures
//!   reach `failure_percentage_threshold` percent is ejected with the chance
//!   `enforcing_failure_percentage` (default **0%**, as in Envoy).
//!   Both eject through the same path (and cap) as consecutive errors.
//!
//! - split counting (`split_external_local_origin_errors`): the workers count HTTP
//!   statuses (external origin) apart from local-origin failures (connect failure or
//!   timeout, reset or garbage before a response, response timeout; see
//!   [`super::health::EndpointHealth::record`]). Consecutive 5xx and gateway errors and
//!   the success-rate / failure-percentage volumes then see statuses only; a run of
//!   `consecutive_local_origin_failure` (default 5) local failures ejects with the
//!   chance `enforcing_consecutive_local_origin_failure` (default 100%), and the
//!   local-origin volumes (a response or an L4 connection is a success) are judged with
//!   the same success-rate and failure-percentage settings, enforced with
//!   `enforcing_local_origin_success_rate` (default 100%) and
//!   `enforcing_failure_percentage_local_origin` (default **0%**), as in Envoy. Unlike
//!   Envoy, which counts a connection made as a local success even when the exchange on
//!   it is then reset, an exchange here is one local-origin outcome: an endpoint that
//!   accepts connections and resets them is ejected too (what Envoy's docs promise for
//!   "communication repeatedly interrupted").

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
    pub success_rate: RateDetection,
    pub failure_percentage: RateDetection,
    /// Envoy's `split_external_local_origin_errors`: the local-origin detection, when on.
    pub local_origin: Option<LocalOriginPolicy>,
    /// Envoy's `successful_active_health_check_uneject_host` (default true): a passing
    /// active check ends an ejection ([`super::active`] reads it from the cluster's
    /// health, where each sweep publishes it).
    pub uneject_on_check: bool,
    /// Random extra ejection time, 0..=this (Envoy `max_ejection_time_jitter`).
    pub jitter_ms: u64,
    /// One endpoint may be ejected whatever `max_ejection_percent` says.
    pub always_eject_one: bool,
}

/// Split counting's local-origin detection: a consecutive-failure threshold and the
/// local-origin success rate and failure percentage (their volumes, host counts and
/// thresholds are the external ones').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalOriginPolicy {
    /// 0: consecutive local-origin detection is off.
    pub consecutive: u32,
    pub enforcing_consecutive: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_failure_percentage: u32,
}

/// One endpoint's volume counter totals, as the workers counted them: (success,
/// error) of the external bucket (all outcomes without split counting) and of the
/// local-origin bucket (split counting only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volumes {
    pub success: u64,
    pub error: u64,
    pub local_success: u64,
    pub local_error: u64,
}

impl From<(u64, u64)> for Volumes {
    fn from((success, error): (u64, u64)) -> Volumes {
        Volumes {
            success,
            error,
            ..Volumes::default()
        }
    }
}

/// One statistical detection kind (success rate or failure percentage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDetection {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Success rate: the stdev factor × 1000; failure percentage: the threshold in
    /// percent.
    pub threshold: u32,
    /// Percent chance that a detected outlier is ejected (0: the kind is off).
    pub enforcing: u32,
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
            success_rate: RateDetection {
                minimum_hosts: o.success_rate_minimum_hosts.unwrap_or(5),
                request_volume: o.success_rate_request_volume.unwrap_or(100),
                threshold: o.success_rate_stdev_factor.unwrap_or(1900),
                enforcing: o.enforcing_success_rate.unwrap_or(100).min(100),
            },
            failure_percentage: RateDetection {
                minimum_hosts: o.failure_percentage_minimum_hosts.unwrap_or(5),
                request_volume: o.failure_percentage_request_volume.unwrap_or(50),
                threshold: o.failure_percentage_threshold.unwrap_or(85).min(100),
                enforcing: o.enforcing_failure_percentage.unwrap_or(0).min(100),
            },
            uneject_on_check: o
                .successful_active_health_check_uneject_host
                .unwrap_or(true),
            jitter_ms: o.max_ejection_time_jitter.map_or(0, ms),
            always_eject_one: o.always_eject_one_host.unwrap_or(true),
            local_origin: (o.split_external_local_origin_errors == Some(true)).then(|| {
                LocalOriginPolicy {
                    consecutive: o.consecutive_local_origin_failure.unwrap_or(5),
                    enforcing_consecutive: o
                        .enforcing_consecutive_local_origin_failure
                        .unwrap_or(100)
                        .min(100),
                    enforcing_success_rate: o
                        .enforcing_local_origin_success_rate
                        .unwrap_or(100)
                        .min(100),
                    enforcing_failure_percentage: o
                        .enforcing_failure_percentage_local_origin
                        .unwrap_or(0)
                        .min(100),
                }
            }),
        }
    }

    /// Whether `e` crossed a consecutive-error threshold: the enforcement chance
    /// (percent) of the strongest kind it crossed, and whether that is the local-origin
    /// run.
    fn detected(&self, e: &EndpointHealth) -> Option<(u32, bool)> {
        let five = self.consecutive_5xx > 0 && e.consecutive_5xx() >= self.consecutive_5xx;
        let gw =
            self.consecutive_gateway > 0 && e.consecutive_gateway() >= self.consecutive_gateway;
        let external = match (five, gw) {
            (false, false) => None,
            (true, false) => Some(self.enforcing_5xx),
            (false, true) => Some(self.enforcing_gateway),
            (true, true) => Some(self.enforcing_5xx.max(self.enforcing_gateway)),
        };
        let local = self
            .local_origin
            .filter(|l| l.consecutive > 0 && e.consecutive_local_origin() >= l.consecutive)
            .map(|l| l.enforcing_consecutive);
        match (external, local) {
            (None, None) => None,
            (Some(x), None) => Some((x, false)),
            (None, Some(l)) => Some((l, true)),
            (Some(x), Some(l)) => Some(if l > x { (l, true) } else { (x, false) }),
        }
    }
}

/// A percent chance (control plane only; not for anything secret).
fn chance(percent: u32) -> bool {
    percent >= 100 || random() % 100 < u64::from(percent)
}

/// A random number (control plane only; not for anything secret).
fn random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    super::maglev::mix64(super::health::now_ms() ^ SEQ.fetch_add(1, Relaxed) << 20)
}

/// One health tick for one cluster at `now` ([`super::health::now_ms`]): un-eject at
/// interval ticks and judge the interval's success rates, then eject endpoints over a
/// threshold while the cap allows. `volume(i)` gives endpoint `i`'s counter totals
/// (read only at interval ticks). Also tells each endpoint whether to count split by
/// origin (the policy of the current table).
pub fn sweep<'a>(
    p: &OutlierPolicy,
    cluster: &ClusterHealth,
    endpoints: impl Iterator<Item = &'a EndpointHealth> + Clone,
    now: u64,
    volume: impl Fn(usize) -> Volumes,
) {
    use std::sync::atomic::Ordering::Relaxed;
    for e in endpoints.clone() {
        e.set_split(p.local_origin.is_some());
    }
    cluster.uneject_on_check.store(p.uneject_on_check, Relaxed);
    let next = cluster.next_interval_ms.load(Relaxed);
    let mut interval_tick = false;
    if next == 0 {
        cluster
            .next_interval_ms
            .store(now.saturating_add(p.interval_ms), Relaxed);
        // The first interval counts from here.
        for (i, e) in endpoints.clone().enumerate() {
            let v = volume(i);
            e.take_volume(v.success, v.error);
            e.take_local_volume(v.local_success, v.local_error);
        }
    } else if now >= next {
        interval_tick = true;
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
    // Ejects `e` if the chance and the cap allow; counts a refusal by the cap.
    let mut try_eject = |e: &EndpointHealth, enforce: u32| -> bool {
        if !chance(enforce) {
            return false;
        }
        let allowed = (ejected == 0 && p.always_eject_one)
            || (ejected + 1) * 100 <= total * u64::from(p.max_ejection_percent);
        if !allowed {
            cluster.ejections_overflow.fetch_add(1, Relaxed);
            return false;
        }
        let jitter = match p.jitter_ms {
            0 => 0,
            j => random() % (j + 1),
        };
        e.eject_for(cluster, now, p.base_ejection_ms, p.max_ejection_ms, jitter);
        ejected += 1;
        true
    };
    if interval_tick {
        let rate = |(s, f): (u64, u64)| {
            let n = s + f;
            (
                n,
                if n == 0 {
                    100.0
                } else {
                    100.0 * s as f64 / n as f64
                },
            )
        };
        let mut rates = Vec::new();
        let mut local_rates = Vec::new();
        for (i, e) in endpoints.clone().enumerate() {
            let v = volume(i);
            rates.push(rate(e.take_volume(v.success, v.error)));
            local_rates.push(rate(e.take_local_volume(v.local_success, v.local_error)));
        }
        let judge = Judge::new(p, &rates);
        for (e, &r) in endpoints.clone().zip(&rates) {
            e.set_last_success_rate(judge.reported(r));
        }
        for (e, &r) in endpoints.clone().zip(&rates) {
            if e.flags() & EJECTED != 0 {
                continue;
            }
            let (sr_out, fp_out) = judge.outliers(r);
            if sr_out && try_eject(e, p.success_rate.enforcing) {
                cluster.ejections_success_rate.fetch_add(1, Relaxed);
            } else if fp_out && try_eject(e, p.failure_percentage.enforcing) {
                cluster.ejections_failure_percentage.fetch_add(1, Relaxed);
            }
        }
        if let Some(l) = &p.local_origin {
            let judge = Judge::new(p, &local_rates);
            for (e, &r) in endpoints.clone().zip(&local_rates) {
                e.set_last_local_success_rate(judge.reported(r));
                if e.flags() & EJECTED != 0 {
                    continue;
                }
                let (sr_out, fp_out) = judge.outliers(r);
                if sr_out && try_eject(e, l.enforcing_success_rate) {
                    cluster
                        .ejections_local_origin_success_rate
                        .fetch_add(1, Relaxed);
                } else if fp_out && try_eject(e, l.enforcing_failure_percentage) {
                    cluster
                        .ejections_local_origin_failure_percentage
                        .fetch_add(1, Relaxed);
                }
            }
        } else {
            for e in endpoints.clone() {
                e.set_last_local_success_rate(None);
            }
        }
    }
    for e in endpoints {
        if e.flags() & EJECTED != 0 {
            continue;
        }
        let Some((enforce, local)) = p.detected(e) else {
            continue;
        };
        // Detected, whether enforced or refused by the cap (Envoy's `enforcing_*`):
        // counted once per crossing, so counting starts again.
        if !try_eject(e, enforce) {
            e.clear_counters();
        } else if local {
            cluster.ejections_local_origin.fetch_add(1, Relaxed);
        }
    }
}

/// One interval's statistical verdicts over one bucket of volumes (external or local
/// origin): the success-rate threshold, and whether failure percentage is judged.
struct Judge {
    sr_volume: u64,
    sr_threshold: Option<f64>,
    fp_volume: u64,
    fp_threshold: f64,
    fp_judged: bool,
}

impl Judge {
    fn new(p: &OutlierPolicy, rates: &[(u64, f64)]) -> Judge {
        let (sr, fp) = (&p.success_rate, &p.failure_percentage);
        Judge {
            sr_volume: u64::from(sr.request_volume),
            sr_threshold: rate_threshold(rates, sr.request_volume, sr.minimum_hosts)
                .map(|(mean, stdev)| mean - f64::from(sr.threshold) / 1000.0 * stdev),
            fp_volume: u64::from(fp.request_volume),
            fp_threshold: f64::from(fp.threshold),
            fp_judged: rate_threshold(rates, fp.request_volume, fp.minimum_hosts).is_some(),
        }
    }

    /// The rate an endpoint reports for the interval (none below the volume).
    fn reported(&self, (n, rate): (u64, f64)) -> Option<f64> {
        (n >= self.sr_volume.max(1)).then_some(rate)
    }

    /// Whether (volume, rate) is a success-rate outlier and whether it is a
    /// failure-percentage one. The kinds are judged apart, as in Envoy: an outlier that
    /// one kind does not eject (its enforcement chance) may be ejected by the other.
    fn outliers(&self, (n, rate): (u64, f64)) -> (bool, bool) {
        let sr = self
            .sr_threshold
            .is_some_and(|t| n >= self.sr_volume && rate < t);
        let fp = self.fp_judged && n >= self.fp_volume && 100.0 - rate >= self.fp_threshold;
        (sr, fp)
    }
}

/// The mean and population standard deviation of the success rates of the endpoints
/// with at least `volume` requests, when there are `minimum_hosts` of them.
fn rate_threshold(rates: &[(u64, f64)], volume: u32, minimum_hosts: u32) -> Option<(f64, f64)> {
    let judged: Vec<f64> = rates
        .iter()
        .filter(|(n, _)| *n >= u64::from(volume) && *n > 0)
        .map(|(_, r)| *r)
        .collect();
    if judged.is_empty() || (judged.len() as u64) < u64::from(minimum_hosts) {
        return None;
    }
    let mean = judged.iter().sum::<f64>() / judged.len() as f64;
    let var = judged.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / judged.len() as f64;
    Some((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::super::health::Outcome;
    use super::*;

    fn none(_: usize) -> Volumes {
        Volumes::default()
    }

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
                success_rate: RateDetection {
                    minimum_hosts: 5,
                    request_volume: 100,
                    threshold: 1900,
                    enforcing: 100,
                },
                failure_percentage: RateDetection {
                    minimum_hosts: 5,
                    request_volume: 50,
                    threshold: 85,
                    enforcing: 0,
                },
                local_origin: None,
                uneject_on_check: true,
                jitter_ms: 0,
                always_eject_one: true,
            }
        );
        let split = OutlierPolicy::from_config(&OutlierDetection {
            split_external_local_origin_errors: Some(true),
            ..OutlierDetection::default()
        });
        assert_eq!(
            split.local_origin,
            Some(LocalOriginPolicy {
                consecutive: 5,
                enforcing_consecutive: 100,
                enforcing_success_rate: 100,
                enforcing_failure_percentage: 0,
            })
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
        sweep(&quiet, &c, e.iter(), 1, none);
        assert!(e[0].usable(), "detected, enforced at 0%");
        assert_eq!(e[0].consecutive_gateway(), 0, "counting starts again");
        let loud = OutlierPolicy {
            enforcing_gateway: 100,
            ..quiet
        };
        for _ in 0..2 {
            e[0].record(Outcome::LocalFailure);
        }
        sweep(&loud, &c, e.iter(), 2, none);
        assert!(!e[0].usable());
    }

    #[test]
    fn consecutive_errors_eject_and_time_brings_back() {
        let p = policy();
        let c = ClusterHealth::default();
        let eps: Vec<EndpointHealth> = (0..4).map(|_| EndpointHealth::default()).collect();
        sweep(&p, &c, eps.iter(), 1, none); // starts the interval clock
        for _ in 0..2 {
            eps[0].record(Outcome::Status(500));
        }
        eps[0].record(Outcome::Status(200)); // breaks the run
        eps[0].record(Outcome::Status(500));
        sweep(&p, &c, eps.iter(), 10, none);
        assert!(eps[0].usable(), "not 3 in a row");
        eps[0].record(Outcome::Status(500));
        eps[0].record(Outcome::Status(500));
        sweep(&p, &c, eps.iter(), 20, none);
        assert!(!eps[0].usable());
        assert_eq!(c.unusable(), 1);
        assert_eq!(eps[0].ejected_until_ms(), 1020);
        // Gateway errors: two connect failures are enough.
        eps[1].record(Outcome::LocalFailure);
        eps[1].record(Outcome::LocalFailure);
        sweep(&p, &c, eps.iter(), 30, none);
        assert!(!eps[1].usable());
        // 50% of 4 = 2 ejected at most: the third is refused and counted.
        for _ in 0..3 {
            eps[2].record(Outcome::Status(503));
        }
        sweep(&p, &c, eps.iter(), 40, none);
        assert!(eps[2].usable());
        assert_eq!(c.ejections_overflow(), 1);
        assert_eq!(eps[2].consecutive_5xx(), 0);
        // Interval ticks: 101 (first sweep after it: 500), then 600 (1010), then 1110.
        sweep(&p, &c, eps.iter(), 500, none);
        sweep(&p, &c, eps.iter(), 1010, none);
        assert!(!eps[0].usable());
        // Time is up at 1020, but they return only at the next interval tick.
        sweep(&p, &c, eps.iter(), 1025, none);
        assert!(!eps[0].usable());
        sweep(&p, &c, eps.iter(), 1115, none);
        assert!(eps[0].usable() && eps[1].usable());
        assert_eq!(c.unusable(), 0);
        // Ejected again: twice the base.
        for _ in 0..3 {
            eps[0].record(Outcome::LocalFailure);
        }
        sweep(&p, &c, eps.iter(), 1140, none);
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
        sweep(&p, &c, eps.iter(), 5, none);
        assert_eq!(eps.iter().filter(|e| !e.usable()).count(), 1);
    }

    /// `always_eject_one_host: false` (Envoy ≥ 1.31's default): the cap holds for the
    /// first ejection too; the jitter lengthens an ejection by at most itself.
    #[test]
    fn the_cap_can_hold_for_the_first_ejection_and_jitter_is_bounded() {
        let mut p = policy();
        p.max_ejection_percent = 10;
        p.always_eject_one = false;
        let c = ClusterHealth::default();
        let eps: Vec<EndpointHealth> = (0..2).map(|_| EndpointHealth::default()).collect();
        for _ in 0..3 {
            eps[0].record(Outcome::Status(500));
        }
        sweep(&p, &c, eps.iter(), 5, none);
        assert!(eps[0].usable(), "10% of 2 endpoints is none");
        assert_eq!(c.ejections_overflow(), 1);
        p.always_eject_one = true;
        p.jitter_ms = 500;
        let mut extras = std::collections::HashSet::new();
        for round in 0..20u64 {
            let now = 10_000 * (round + 1);
            for _ in 0..3 {
                eps[0].record(Outcome::Status(500));
            }
            sweep(&p, &c, eps.iter(), now, none);
            assert!(!eps[0].usable());
            let extra = eps[0].ejected_until_ms() - now - 1000 * u64::from(eps[0].times_ejected());
            assert!(extra <= 500, "{extra}");
            extras.insert(extra);
            eps[0].uneject(&c);
            while eps[0].times_ejected() > 0 {
                eps[0].forgive_one();
            }
        }
        assert!(extras.len() > 1, "jittered: {extras:?}");
    }

    #[test]
    fn the_multiplier_decays_while_healthy() {
        let p = policy();
        let c = ClusterHealth::default();
        let e = [EndpointHealth::default()];
        sweep(&p, &c, e.iter(), 1, none);
        for _ in 0..3 {
            e[0].record(Outcome::Status(502));
        }
        sweep(&p, &c, e.iter(), 2, none);
        assert_eq!(e[0].times_ejected(), 1);
        sweep(&p, &c, e.iter(), 1200, none); // back
        assert!(e[0].usable());
        sweep(&p, &c, e.iter(), 1300, none); // one healthy interval
        assert_eq!(e[0].times_ejected(), 0);
    }

    /// Success rate: five endpoints with 100 requests each per interval, one at 60%
    /// success: mean 92, stdev 16 → threshold 92 − 1.9 × 16 = 61.6 → it is ejected; an
    /// endpoint below the request volume is not judged.
    #[test]
    fn success_rate_outliers_are_ejected_at_the_interval() {
        let p = OutlierPolicy::from_config(&OutlierDetection {
            interval: Some(Duration::from_millis(100)),
            base_ejection_time: Some(Duration::from_millis(1000)),
            max_ejection_percent: Some(50),
            ..OutlierDetection::default()
        });
        let c = ClusterHealth::default();
        let eps: Vec<EndpointHealth> = (0..6).map(|_| EndpointHealth::default()).collect();
        let counts = std::cell::RefCell::new(vec![(0u64, 0u64); 6]);
        let vol = |i: usize| Volumes::from(counts.borrow()[i]);
        sweep(&p, &c, eps.iter(), 1, vol);
        {
            let mut k = counts.borrow_mut();
            for e in k.iter_mut().take(4) {
                *e = (100, 0);
            }
            k[4] = (60, 40);
            k[5] = (0, 99); // all failing, but below the volume: not judged
        }
        sweep(&p, &c, eps.iter(), 50, vol);
        assert!(eps.iter().all(|e| e.usable()), "only at interval ticks");
        sweep(&p, &c, eps.iter(), 101, vol);
        let out: Vec<bool> = eps.iter().map(|e| !e.usable()).collect();
        assert_eq!(out, [false, false, false, false, true, false]);
        assert_eq!(c.ejections_success_rate(), 1);
        assert_eq!(eps[4].last_success_rate(), Some(60.0));
        assert_eq!(eps[5].last_success_rate(), None, "below the volume");
        // The next interval has no volume: nothing judged; it returns after its time.
        sweep(&p, &c, eps.iter(), 202, vol);
        sweep(&p, &c, eps.iter(), 1102, vol);
        assert!(eps[4].usable());
        // Fewer hosts with volume than the minimum: not judged.
        {
            let mut k = counts.borrow_mut();
            k[0].0 += 100;
            k[4].1 += 100;
        }
        sweep(&p, &c, eps.iter(), 1203, vol);
        assert!(eps[4].usable(), "2 hosts with volume < 5");
    }

    /// Failure percentage: enforced only when asked (Envoy's default 0%), then an
    /// endpoint at or over the threshold is ejected, however the others do.
    #[test]
    fn failure_percentage_ejects_over_the_threshold_when_enforced() {
        let od = |enforce: u32| {
            OutlierPolicy::from_config(&OutlierDetection {
                interval: Some(Duration::from_millis(100)),
                max_ejection_percent: Some(100),
                enforcing_success_rate: Some(0),
                failure_percentage_threshold: Some(50),
                failure_percentage_minimum_hosts: Some(2),
                failure_percentage_request_volume: Some(10),
                enforcing_failure_percentage: Some(enforce),
                ..OutlierDetection::default()
            })
        };
        for (enforce, want) in [(0, [false, false]), (100, [true, true])] {
            let p = od(enforce);
            let c = ClusterHealth::default();
            let eps: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
            let vol = |i: usize| Volumes::from([(0, 0), (5, 5), (1, 19)][i]);
            sweep(&p, &c, eps.iter(), 1, none);
            sweep(&p, &c, eps.iter(), 101, vol);
            let out = [!eps[1].usable(), !eps[2].usable()];
            assert_eq!(out, want, "enforcing {enforce}%");
            assert!(eps[0].usable(), "no volume");
            assert_eq!(c.ejections_failure_percentage(), u64::from(want[0]) * 2);
        }
    }

    /// Split counting: local failures do not feed the 5xx run (and statuses do not feed
    /// the local run); a run of local failures ejects on its own threshold, counted as
    /// a local-origin ejection.
    #[test]
    fn split_counting_ejects_on_local_origin_runs() {
        let p = OutlierPolicy::from_config(&OutlierDetection {
            consecutive_5xx: Some(3),
            split_external_local_origin_errors: Some(true),
            consecutive_local_origin_failure: Some(4),
            max_ejection_percent: Some(100),
            ..OutlierDetection::default()
        });
        let c = ClusterHealth::default();
        let eps: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
        sweep(&p, &c, eps.iter(), 1, none); // switches the endpoints to split counting
        assert!(eps.iter().all(|e| e.split()));
        for _ in 0..3 {
            eps[0].record(Outcome::LocalFailure); // 3 < 4 local, and no 5xx
            eps[1].record(Outcome::Status(500));
            eps[1].record(Outcome::LocalFailure); // local runs end at each response
        }
        sweep(&p, &c, eps.iter(), 2, none);
        assert!(eps[0].usable(), "3 local failures are not 3 5xx");
        assert!(!eps[1].usable(), "3 5xx in a row, local failures between");
        assert_eq!(c.ejections_local_origin(), 0);
        eps[0].record(Outcome::LocalFailure);
        sweep(&p, &c, eps.iter(), 3, none);
        assert!(!eps[0].usable());
        assert_eq!(c.ejections_local_origin(), 1);
        // Enforcement 0: detected, not ejected, counting starts again.
        let quiet = OutlierPolicy {
            local_origin: p.local_origin.map(|l| LocalOriginPolicy {
                enforcing_consecutive: 0,
                ..l
            }),
            ..p
        };
        for _ in 0..4 {
            eps[2].record(Outcome::LocalFailure);
        }
        sweep(&quiet, &c, eps.iter(), 4, none);
        assert!(eps[2].usable());
        assert_eq!(eps[2].consecutive_local_origin(), 0);
        // Split counting off again: every endpoint counts one bucket.
        let plain = OutlierPolicy {
            local_origin: None,
            ..p
        };
        sweep(&plain, &c, eps.iter(), 5, none);
        assert!(eps.iter().all(|e| !e.split()));
    }

    /// Split counting: the local-origin volumes are judged apart, with their own
    /// enforcement; the external ones see statuses only.
    #[test]
    fn split_counting_judges_local_origin_rates() {
        let od = |sr: u32, fp: u32| {
            OutlierPolicy::from_config(&OutlierDetection {
                interval: Some(Duration::from_millis(100)),
                max_ejection_percent: Some(100),
                success_rate_minimum_hosts: Some(3),
                success_rate_request_volume: Some(10),
                success_rate_stdev_factor: Some(1000),
                failure_percentage_threshold: Some(50),
                failure_percentage_minimum_hosts: Some(3),
                failure_percentage_request_volume: Some(10),
                split_external_local_origin_errors: Some(true),
                enforcing_local_origin_success_rate: Some(sr),
                enforcing_failure_percentage_local_origin: Some(fp),
                ..OutlierDetection::default()
            })
        };
        // Every endpoint answers all its statuses well; endpoint 2 fails 60% locally.
        let vol = |i: usize| Volumes {
            success: 40,
            error: 0,
            local_success: 40,
            local_error: if i == 2 { 60 } else { 0 },
        };
        for (sr, fp, want_sr, want_fp) in [(0, 0, 0, 0), (100, 0, 1, 0), (0, 100, 0, 1)] {
            let p = od(sr, fp);
            let c = ClusterHealth::default();
            let eps: Vec<EndpointHealth> = (0..3).map(|_| EndpointHealth::default()).collect();
            sweep(&p, &c, eps.iter(), 1, none);
            sweep(&p, &c, eps.iter(), 101, vol);
            let out: Vec<bool> = eps.iter().map(|e| !e.usable()).collect();
            let ejected = want_sr + want_fp == 1;
            assert_eq!(out, [false, false, ejected], "enforcing {sr}/{fp}");
            assert_eq!(c.ejections_success_rate(), 0, "statuses are all fine");
            assert_eq!(c.ejections_failure_percentage(), 0);
            assert_eq!(c.ejections_local_origin_success_rate(), want_sr);
            assert_eq!(c.ejections_local_origin_failure_percentage(), want_fp);
            assert_eq!(eps[2].last_success_rate(), Some(100.0));
            assert_eq!(eps[2].last_local_success_rate(), Some(40.0));
        }
    }

    #[test]
    fn rate_statistics() {
        let r = [(100, 100.0), (100, 100.0), (100, 60.0), (5, 0.0)];
        let (mean, stdev) = rate_threshold(&r, 10, 3).unwrap();
        assert!((mean - 86.666).abs() < 0.01 && (stdev - 18.856).abs() < 0.01);
        assert_eq!(rate_threshold(&r, 10, 4), None);
        assert_eq!(rate_threshold(&[], 0, 0), None);
    }
}
