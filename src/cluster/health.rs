//! Endpoint health shared between the workers and the control plane: the state that
//! passive outlier detection ([`super::outlier`]) and active health checks
//! ([`super::active`]) decide, and that `ClusterEntry::pick` reads.
//!
//! Owns one [`EndpointHealth`] per (cluster, endpoint address) and one [`ClusterHealth`]
//! per cluster name, handed out by the `StatsRegistry` so that they survive routing-table
//! swaps as the counters do. Workers only *record* outcomes (relaxed atomic increments on
//! an error, one load — and a store only after an error — on a success) and *read* the
//! usable flag; they never lock, allocate, or decide an ejection. The control plane alone
//! writes the flags, the ejection times and the cluster's unusable count.
//!
//! Invariant: `ClusterHealth::unusable` is never below the number of flagged endpoints
//! of the current table (raised before a flag is set, lowered after one is cleared,
//! recounted every health tick), so a pick that reads 0 may skip every per-endpoint
//! check: with nothing ejected a pick reads one extra word.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;
use std::time::Instant;

/// Ejected by outlier detection.
pub const EJECTED: u8 = 1;
/// Failed its active health check.
pub const CHECK_FAILED: u8 = 2;

/// What one upstream exchange told us about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response with this status.
    Status(u16),
    /// A failure of our own making towards the endpoint (a local-origin error): connect
    /// refused or timed out, reset or garbage before a response, response timeout.
    /// Envoy without `split_external_local_origin_errors` counts these as a 503: a 5xx
    /// and a gateway error; with it, as local-origin failures only.
    LocalFailure,
    /// An L4 connection was established: the end of that exchange as far as health goes
    /// (Envoy's `LocalOriginConnectSuccessFinal`, the TCP proxy's success).
    ConnectedFinal,
}

impl Outcome {
    /// Whether success-rate and failure-percentage detection count this as a failure
    /// (Envoy without `split_external_local_origin_errors`: 5xx and local failures).
    #[inline]
    pub fn is_error(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::LocalFailure => true,
            Outcome::ConnectedFinal => false,
        }
    }
}

/// Record an outcome on the endpoint's health and on its volume counters (the worker's
/// own slot of `stats`). Without split counting every outcome is one
/// [`crate::telemetry::UpstreamCounter::RqSuccess`] or `RqError`; with it (Envoy's
/// `split_external_local_origin_errors`) those count HTTP statuses only (the external
/// origin), and `RqLocalOriginSuccess` / `RqLocalOriginError` count how the exchange
/// went at the connection level: a response (or an L4 connection) is a local-origin
/// success, a [`Outcome::LocalFailure`] a local-origin error. Worker side: lock-free, no
/// allocation, no shared line written on a success.
#[inline]
pub fn record(
    health: &EndpointHealth,
    stats: &crate::telemetry::UpstreamStats,
    worker: usize,
    o: Outcome,
) {
    use crate::telemetry::UpstreamCounter::{
        RqError, RqLocalOriginError, RqLocalOriginSuccess, RqSuccess,
    };
    health.record(o);
    if !health.split() {
        stats.inc(worker, if o.is_error() { RqError } else { RqSuccess });
        return;
    }
    match o {
        Outcome::Status(s) => {
            stats.inc(worker, if s >= 500 { RqError } else { RqSuccess });
            stats.inc(worker, RqLocalOriginSuccess);
        }
        Outcome::ConnectedFinal => stats.inc(worker, RqLocalOriginSuccess),
        Outcome::LocalFailure => stats.inc(worker, RqLocalOriginError),
    }
}

/// One endpoint's health. 64-byte aligned so that two endpoints never share a line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct EndpointHealth {
    // Written by workers.
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Split counting only: consecutive local-origin failures.
    consecutive_local_origin: AtomicU32,
    // Written by the control plane only.
    /// Envoy's `split_external_local_origin_errors` for this endpoint's cluster: read by
    /// the workers at each outcome (same line as the counters), set before a table is
    /// published (`Routes::store`) and by each outlier sweep from the current table.
    split: AtomicBool,
    flags: AtomicU8,
    times_ejected: AtomicU32,
    ejections_total: AtomicU64,
    /// [`now_ms`] at which an ejected endpoint may come back (0: not ejected).
    ejected_until_ms: AtomicU64,
    /// When the current ejection started ([`now_ms`]).
    ejected_at_ms: AtomicU64,
    /// Active checks: consecutive results of the current kind, and totals.
    check_streak: AtomicU32,
    checks_total: AtomicU64,
    checks_failed: AtomicU64,
    /// The volume counters (success, error) at the last interval tick: the next tick's
    /// volumes are the differences.
    seen_success: AtomicU64,
    seen_error: AtomicU64,
    /// The same for the local-origin volumes (split counting).
    seen_local_success: AtomicU64,
    seen_local_error: AtomicU64,
    /// The success rate of the last interval, in hundredths of a percent plus one (0:
    /// too few requests to count); and the local-origin one (split counting).
    last_success_rate: AtomicU32,
    last_local_success_rate: AtomicU32,
    /// Slow start ([`super::slow_start`]): when the endpoint joined its cluster or, with
    /// active checks, last turned healthy ([`now_ms`]; 0: not stamped yet — the next
    /// compile or tick stamps it).
    slow_start_since_ms: AtomicU64,
    /// Its weight scale now, in 1/[`super::slow_start::FULL`] (0: full weight, not in
    /// slow start). Read by the workers' picks while the cluster's
    /// `ClusterHealth::slow_starting` is not 0.
    slow_start_scale: AtomicU32,
}

impl EndpointHealth {
    /// Record an outcome (worker side). Lock-free; writes only after an error, or on the
    /// first success after errors.
    ///
    /// Split counting (Envoy's `split_external_local_origin_errors`): a status counts
    /// towards the 5xx and gateway runs only and ends a local-origin run (the connection
    /// served); a local failure counts towards the local-origin run only; an L4
    /// connection ends a local-origin run and leaves the others alone.
    #[inline]
    pub fn record(&self, o: Outcome) {
        if self.split.load(Relaxed) {
            match o {
                Outcome::Status(s) => {
                    bump_or_clear(&self.consecutive_5xx, s >= 500);
                    bump_or_clear(&self.consecutive_gateway, matches!(s, 502..=504));
                    bump_or_clear(&self.consecutive_local_origin, false);
                }
                Outcome::ConnectedFinal => bump_or_clear(&self.consecutive_local_origin, false),
                Outcome::LocalFailure => bump_or_clear(&self.consecutive_local_origin, true),
            }
            return;
        }
        let (five_xx, gateway) = match o {
            Outcome::Status(s) if s >= 500 => (true, matches!(s, 502..=504)),
            Outcome::Status(_) | Outcome::ConnectedFinal => (false, false),
            Outcome::LocalFailure => (true, true),
        };
        bump_or_clear(&self.consecutive_5xx, five_xx);
        bump_or_clear(&self.consecutive_gateway, gateway);
    }

    /// Whether outcomes are counted split by origin (external / local).
    #[inline]
    pub fn split(&self) -> bool {
        self.split.load(Relaxed)
    }

    /// Whether picks may choose this endpoint.
    #[inline]
    pub fn usable(&self) -> bool {
        self.flags.load(Relaxed) == 0
    }

    pub fn flags(&self) -> u8 {
        self.flags.load(Relaxed)
    }

    pub fn consecutive_5xx(&self) -> u32 {
        self.consecutive_5xx.load(Relaxed)
    }

    pub fn consecutive_gateway(&self) -> u32 {
        self.consecutive_gateway.load(Relaxed)
    }

    pub fn consecutive_local_origin(&self) -> u32 {
        self.consecutive_local_origin.load(Relaxed)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Relaxed)
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Relaxed)
    }

    pub fn checks(&self) -> (u64, u64) {
        (
            self.checks_total.load(Relaxed),
            self.checks_failed.load(Relaxed),
        )
    }

    /// The endpoint's slow-start weight scale in 1/[`super::slow_start::FULL`]; `FULL`
    /// when it is not in slow start.
    #[inline]
    pub fn slow_start_scale(&self) -> u32 {
        match self.slow_start_scale.load(Relaxed) {
            0 => super::slow_start::FULL,
            s => s,
        }
    }

    /// When its slow start began ([`now_ms`]; 0: not stamped yet).
    pub fn slow_start_since_ms(&self) -> u64 {
        self.slow_start_since_ms.load(Relaxed)
    }

    // === control plane only ===

    /// Stamp the start of the endpoint's slow start if it has none (it just joined).
    pub(crate) fn stamp_joined(&self, now: u64) {
        // Read first: the tick calls this on every endpoint, and a write (even a failed
        // compare-exchange) would take the line the workers read from them.
        if self.slow_start_since_ms.load(Relaxed) == 0 {
            let _ = self
                .slow_start_since_ms
                .compare_exchange(0, now.max(1), Relaxed, Relaxed);
        }
    }

    /// Start the endpoint's slow start again (an active check turned it healthy).
    /// Control plane only (public for tests).
    pub fn restart_slow_start(&self, now: u64) {
        self.slow_start_since_ms.store(now.max(1), Relaxed);
    }

    /// Publish the endpoint's weight scale (`FULL` or more: full weight).
    pub(crate) fn set_slow_start_scale(&self, scale: u32) {
        let v = if scale >= super::slow_start::FULL {
            0
        } else {
            scale.max(1)
        };
        // Unchanged (the common case, every tick): no write to the workers' line.
        if self.slow_start_scale.load(Relaxed) != v {
            self.slow_start_scale.store(v, Relaxed);
        }
    }

    /// Set or clear a flag, keeping the cluster's unusable count an upper bound: it is
    /// raised before an endpoint becomes unusable and lowered after it is usable again.
    pub(crate) fn set_flag(&self, cluster: &ClusterHealth, f: u8, on: bool) {
        let before = self.flags.load(Relaxed);
        let after = if on { before | f } else { before & !f };
        if before == after {
            return;
        }
        if before == 0 {
            cluster.unusable.fetch_add(1, Relaxed);
        }
        self.flags.store(after, Relaxed);
        if after == 0 {
            let _ = cluster
                .unusable
                .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(1)));
        }
    }

    /// Eject until `now + base × times ejected` (capped at `max`); clears the counters.
    /// Control plane only (public for benchmarks and tests).
    pub fn eject(&self, cluster: &ClusterHealth, now: u64, base_ms: u64, max_ms: u64) {
        self.eject_for(cluster, now, base_ms, max_ms, 0)
    }

    /// [`Self::eject`], `jitter_ms` longer (Envoy's `max_ejection_time_jitter` draw).
    pub(crate) fn eject_for(
        &self,
        cluster: &ClusterHealth,
        now: u64,
        base_ms: u64,
        max_ms: u64,
        jitter_ms: u64,
    ) {
        let times = self.times_ejected.load(Relaxed).saturating_add(1);
        self.times_ejected.store(times, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        let for_ms = base_ms
            .saturating_mul(u64::from(times))
            .min(max_ms)
            .saturating_add(jitter_ms);
        self.ejected_at_ms.store(now, Relaxed);
        self.ejected_until_ms
            .store(now.saturating_add(for_ms).max(1), Relaxed);
        self.clear_counters();
        self.set_flag(cluster, EJECTED, true);
    }

    pub fn uneject(&self, cluster: &ClusterHealth) {
        self.set_flag(cluster, EJECTED, false);
        self.ejected_until_ms.store(0, Relaxed);
        self.clear_counters();
    }

    /// Envoy: each interval a host spends un-ejected lowers its ejection multiplier.
    pub(crate) fn forgive_one(&self) {
        let t = self.times_ejected.load(Relaxed);
        if t > 0 {
            self.times_ejected.store(t - 1, Relaxed);
        }
    }

    pub(crate) fn clear_counters(&self) {
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway.store(0, Relaxed);
        self.consecutive_local_origin.store(0, Relaxed);
    }

    /// Switch split counting on or off (control plane, from the current table). A switch
    /// starts every run again: the runs counted so far meant something else.
    pub fn set_split(&self, on: bool) {
        if self.split.load(Relaxed) != on {
            self.split.store(on, Relaxed);
            self.clear_counters();
        }
    }

    /// One active check's result; returns the streak of results of this kind.
    pub(crate) fn check_result(&self, ok: bool) -> u32 {
        self.checks_total.fetch_add(1, Relaxed);
        if !ok {
            self.checks_failed.fetch_add(1, Relaxed);
        }
        let failed_now = self.flags() & CHECK_FAILED != 0;
        // The streak counts results that argue for a change of state.
        if ok == failed_now {
            self.check_streak.fetch_add(1, Relaxed) + 1
        } else {
            self.check_streak.store(0, Relaxed);
            0
        }
    }

    /// The (success, error) volumes since the last call, given the counters' totals now;
    /// remembers the totals. Control plane only.
    pub(crate) fn take_volume(&self, success: u64, error: u64) -> (u64, u64) {
        let s = success.saturating_sub(self.seen_success.swap(success, Relaxed));
        let e = error.saturating_sub(self.seen_error.swap(error, Relaxed));
        (s, e)
    }

    /// [`Self::take_volume`] for the local-origin volumes (split counting).
    pub(crate) fn take_local_volume(&self, success: u64, error: u64) -> (u64, u64) {
        let s = success.saturating_sub(self.seen_local_success.swap(success, Relaxed));
        let e = error.saturating_sub(self.seen_local_error.swap(error, Relaxed));
        (s, e)
    }

    /// The success rate (percent) of the last interval that had volume enough.
    pub fn last_success_rate(&self) -> Option<f64> {
        match self.last_success_rate.load(Relaxed) {
            0 => None,
            r => Some(f64::from(r - 1) / 100.0),
        }
    }

    pub(crate) fn set_last_success_rate(&self, r: Option<f64>) {
        self.last_success_rate.store(encode_rate(r), Relaxed);
    }

    /// The local-origin success rate (percent) of the last interval that had volume
    /// enough (split counting only).
    pub fn last_local_success_rate(&self) -> Option<f64> {
        match self.last_local_success_rate.load(Relaxed) {
            0 => None,
            r => Some(f64::from(r - 1) / 100.0),
        }
    }

    pub(crate) fn set_last_local_success_rate(&self, r: Option<f64>) {
        self.last_local_success_rate.store(encode_rate(r), Relaxed);
    }

    pub(crate) fn reset_streak(&self) {
        self.check_streak.store(0, Relaxed);
    }
}

fn encode_rate(r: Option<f64>) -> u32 {
    r.map_or(0, |r| (r * 100.0).round() as u32 + 1)
}

#[inline]
fn bump_or_clear(c: &AtomicU32, bump: bool) {
    if bump {
        c.fetch_add(1, Relaxed);
    } else if c.load(Relaxed) != 0 {
        c.store(0, Relaxed);
    }
}

/// One cluster's health summary, read by every pick.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ClusterHealth {
    /// Endpoints with a flag set (an upper bound while the control plane updates).
    pub(crate) unusable: AtomicU32,
    /// Ejections refused because `max_ejection_percent` was reached.
    pub(crate) ejections_overflow: AtomicU64,
    /// Outlier detection: when the next interval tick is due ([`now_ms`]; 0: not yet
    /// started).
    pub(crate) next_interval_ms: AtomicU64,
    /// Ejections by success rate and by failure percentage (Envoy's
    /// `ejections_enforced_success_rate` / `_failure_percentage`).
    pub(crate) ejections_success_rate: AtomicU64,
    pub(crate) ejections_failure_percentage: AtomicU64,
    /// Split counting: ejections by consecutive local-origin failures, by local-origin
    /// success rate and by local-origin failure percentage (Envoy's
    /// `ejections_enforced_consecutive_local_origin_failure`, `_local_origin_success_rate`,
    /// `_local_origin_failure_percentage`).
    pub(crate) ejections_local_origin: AtomicU64,
    pub(crate) ejections_local_origin_success_rate: AtomicU64,
    pub(crate) ejections_local_origin_failure_percentage: AtomicU64,
    /// The outlier policy's `successful_active_health_check_uneject_host` (false without
    /// outlier detection), published by each sweep for the active checks.
    pub(crate) uneject_on_check: AtomicBool,
    /// Ejections ended early by a passing active check.
    pub(crate) unejections_by_check: AtomicU64,
    /// Endpoints whose weight is scaled down by slow start now (0: picks skip the
    /// per-endpoint scales). Written by the control plane with the scales.
    pub(crate) slow_starting: AtomicU32,
}

impl ClusterHealth {
    #[inline]
    pub fn unusable(&self) -> u32 {
        self.unusable.load(Relaxed)
    }

    /// Endpoints in slow start now (one relaxed load per pick of a slow-start cluster).
    #[inline]
    pub fn slow_starting(&self) -> u32 {
        self.slow_starting.load(Relaxed)
    }

    /// Set the unusable count from the endpoints of the current table (an endpoint that
    /// left the table while flagged no longer counts). Control plane only, on the same
    /// thread as every flag change.
    pub fn recount<'a>(&self, endpoints: impl Iterator<Item = &'a EndpointHealth>) {
        let n = endpoints.filter(|e| !e.usable()).count() as u32;
        if self.unusable.load(Relaxed) != n {
            self.unusable.store(n, Relaxed);
        }
    }

    pub fn ejections_overflow(&self) -> u64 {
        self.ejections_overflow.load(Relaxed)
    }

    pub fn ejections_success_rate(&self) -> u64 {
        self.ejections_success_rate.load(Relaxed)
    }

    pub fn ejections_failure_percentage(&self) -> u64 {
        self.ejections_failure_percentage.load(Relaxed)
    }

    pub fn uneject_on_check(&self) -> bool {
        self.uneject_on_check.load(Relaxed)
    }

    pub fn unejections_by_check(&self) -> u64 {
        self.unejections_by_check.load(Relaxed)
    }

    pub fn ejections_local_origin(&self) -> u64 {
        self.ejections_local_origin.load(Relaxed)
    }

    pub fn ejections_local_origin_success_rate(&self) -> u64 {
        self.ejections_local_origin_success_rate.load(Relaxed)
    }

    pub fn ejections_local_origin_failure_percentage(&self) -> u64 {
        self.ejections_local_origin_failure_percentage.load(Relaxed)
    }
}

/// Milliseconds on the process's health clock (monotonic; starts near 1, never 0).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = *EPOCH.get_or_init(Instant::now);
    e.elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_as_envoy_does() {
        let h = EndpointHealth::default();
        h.record(Outcome::Status(500));
        h.record(Outcome::Status(503));
        assert_eq!((h.consecutive_5xx(), h.consecutive_gateway()), (2, 1));
        h.record(Outcome::LocalFailure);
        assert_eq!((h.consecutive_5xx(), h.consecutive_gateway()), (3, 2));
        h.record(Outcome::Status(500)); // a 5xx that is not a gateway error
        assert_eq!((h.consecutive_5xx(), h.consecutive_gateway()), (4, 0));
        h.record(Outcome::Status(404));
        assert_eq!((h.consecutive_5xx(), h.consecutive_gateway()), (0, 0));
        h.record(Outcome::LocalFailure);
        h.record(Outcome::ConnectedFinal);
        assert_eq!((h.consecutive_5xx(), h.consecutive_gateway()), (0, 0));
    }

    #[test]
    fn split_counting_keeps_local_failures_apart() {
        let h = EndpointHealth::default();
        h.record(Outcome::Status(500));
        h.set_split(true);
        assert_eq!(h.consecutive_5xx(), 0, "a switch starts the runs again");
        h.record(Outcome::LocalFailure);
        h.record(Outcome::LocalFailure);
        assert_eq!(
            (
                h.consecutive_5xx(),
                h.consecutive_gateway(),
                h.consecutive_local_origin()
            ),
            (0, 0, 2)
        );
        h.record(Outcome::Status(503));
        assert_eq!(
            (
                h.consecutive_5xx(),
                h.consecutive_gateway(),
                h.consecutive_local_origin()
            ),
            (1, 1, 0),
            "a response: the connection served"
        );
        h.record(Outcome::LocalFailure);
        assert_eq!((h.consecutive_5xx(), h.consecutive_local_origin()), (1, 1));
        h.record(Outcome::ConnectedFinal);
        assert_eq!((h.consecutive_5xx(), h.consecutive_local_origin()), (1, 0));
        h.record(Outcome::Status(200));
        assert_eq!(h.consecutive_5xx(), 0);
        h.set_split(false);
        h.record(Outcome::LocalFailure);
        assert_eq!(
            (
                h.consecutive_5xx(),
                h.consecutive_gateway(),
                h.consecutive_local_origin()
            ),
            (1, 1, 0)
        );
    }

    #[test]
    fn split_volumes_count_each_origin() {
        use crate::telemetry::UpstreamCounter::{
            RqError, RqLocalOriginError, RqLocalOriginSuccess, RqSuccess,
        };
        let stats = crate::telemetry::UpstreamStats::new(1);
        let h = EndpointHealth::default();
        let all = |s: &crate::telemetry::UpstreamStats| {
            [
                s.get(RqSuccess),
                s.get(RqError),
                s.get(RqLocalOriginSuccess),
                s.get(RqLocalOriginError),
            ]
        };
        for o in [
            Outcome::Status(200),
            Outcome::Status(502),
            Outcome::LocalFailure,
        ] {
            record(&h, &stats, 0, o);
        }
        assert_eq!(all(&stats), [1, 2, 0, 0], "one bucket");
        h.set_split(true);
        for o in [
            Outcome::Status(200),
            Outcome::Status(502),
            Outcome::LocalFailure,
            Outcome::ConnectedFinal,
        ] {
            record(&h, &stats, 0, o);
        }
        assert_eq!(all(&stats), [2, 3, 3, 1], "statuses apart from connections");
    }

    #[test]
    fn ejection_time_grows_with_times_ejected_and_is_capped() {
        let h = EndpointHealth::default();
        let c = ClusterHealth::default();
        h.eject(&c, 1000, 100, 250);
        assert!(!h.usable());
        assert_eq!(c.unusable(), 1);
        assert_eq!(h.ejected_until_ms(), 1100);
        h.uneject(&c);
        assert!(h.usable());
        assert_eq!(c.unusable(), 0);
        h.eject(&c, 2000, 100, 250);
        assert_eq!(h.ejected_until_ms(), 2200);
        h.set_flag(&c, CHECK_FAILED, true);
        assert_eq!(c.unusable(), 1, "one endpoint, two reasons");
        h.uneject(&c);
        assert!(!h.usable(), "still failing its check");
        h.set_flag(&c, CHECK_FAILED, false);
        assert_eq!(c.unusable(), 0);
        h.eject(&c, 3000, 100, 250);
        assert_eq!(h.ejected_until_ms(), 3250, "capped");
        assert_eq!((h.times_ejected(), h.ejections_total()), (3, 3));
        h.uneject(&c);
        h.forgive_one();
        assert_eq!(h.times_ejected(), 2);
    }

    #[test]
    fn check_streaks_count_towards_a_change() {
        let h = EndpointHealth::default();
        let c = ClusterHealth::default();
        assert_eq!(h.check_result(true), 0); // healthy and passing: no streak
        assert_eq!(h.check_result(false), 1);
        assert_eq!(h.check_result(false), 2);
        h.set_flag(&c, CHECK_FAILED, true);
        h.reset_streak();
        assert_eq!(h.check_result(false), 0);
        assert_eq!(h.check_result(true), 1);
        assert_eq!(h.checks(), (5, 3));
    }
}
