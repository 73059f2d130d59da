//! A worker's local rate-limit buckets: a fixed-size, set-associative table of token
//! buckets keyed by a descriptor hash (see [`RateLimitRule`](crate::route::http::ratelimit::RateLimitRule)).
//!
//! Owns the buckets of one worker; never locks, never allocates after the table's one
//! allocation (on first use), never grows: [`SETS`] × [`WAYS`] buckets. A new key takes
//! an empty way of its set or evicts the least recently used one (counted by the caller
//! as `http_ratelimit_evictions`); an evicted key comes back with a full bucket, so under
//! a flood of distinct attacker-chosen values a limit can only get laxer, never wrong for
//! other keys, and memory stays fixed.
//!
//! The configured bucket is for the whole proxy: worker `w` of `n` holds a share of it
//! (`max_tokens` and `tokens_per_fill` split as evenly as integers allow, at least one
//! token; when `tokens_per_fill` < `n` each worker refills the whole amount `n` times
//! less often). The instance never admits more than the configured rate (except that
//! every worker holds at least one token); a client whose connections all land on one
//! worker sees that worker's share. Keys are hashed with a per-worker random key
//! (SipHash), so clients cannot aim collisions.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::route::http::ratelimit::BucketSpec;

pub const SETS: usize = 1024;
pub const WAYS: usize = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// 0: empty way.
    key: u64,
    spec: Option<BucketSpec>,
    tokens: u32,
    last_fill_ms: u64,
    used_ms: u64,
}

/// What a bucket said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Tokens left in this worker's bucket after the request.
    pub remaining: u32,
    /// Milliseconds until the bucket's next fill.
    pub reset_ms: u64,
    /// Another key's bucket was evicted to make room.
    pub evicted: bool,
}

pub struct Limiter {
    worker: usize,
    workers: usize,
    table: Box<[Bucket]>,
    hasher: RandomState,
}

/// This worker's part of `x` split over `n` (the first `x % n` workers get one more).
fn share(x: u32, w: usize, n: usize) -> u32 {
    let n = n as u32;
    x / n + u32::from((w as u32) < x % n)
}

impl Limiter {
    pub fn new(worker: usize, workers: usize) -> Limiter {
        Limiter {
            worker,
            workers: workers.max(1),
            table: Box::new([]),
            hasher: RandomState::new(),
        }
    }

    /// The keyed hasher descriptors are fed into.
    pub fn hasher(&self) -> std::collections::hash_map::DefaultHasher {
        self.hasher.build_hasher()
    }

    /// This worker's (max tokens, tokens per fill, fill interval ms) for `spec`.
    fn local(&self, spec: BucketSpec) -> (u32, u32, u64) {
        let (w, n) = (self.worker, self.workers);
        let max = share(spec.max_tokens, w, n).max(1);
        if spec.tokens_per_fill as usize >= n {
            (max, share(spec.tokens_per_fill, w, n), spec.fill_ms)
        } else {
            (
                max,
                spec.tokens_per_fill,
                spec.fill_ms.saturating_mul(n as u64),
            )
        }
    }

    /// Take a token for `key` (a descriptor hash) from its bucket.
    pub fn take(&mut self, key: u64, spec: BucketSpec, now_ms: u64) -> Verdict {
        if self.table.is_empty() {
            // Once per worker, on the first rate-limited request.
            self.table = vec![Bucket::default(); SETS * WAYS].into_boxed_slice();
        }
        let key = key | 1; // never the empty marker
        let (max, per_fill, fill_ms) = self.local(spec);
        let set = (key >> 1) as usize % SETS * WAYS;
        let ways = &mut self.table[set..set + WAYS];
        let mut evicted = false;
        let i = match ways.iter().position(|b| b.key == key) {
            Some(i) => i,
            None => {
                let i = ways.iter().position(|b| b.key == 0).unwrap_or_else(|| {
                    evicted = true;
                    (0..WAYS).min_by_key(|&i| ways[i].used_ms).unwrap_or(0)
                });
                ways[i] = Bucket {
                    key,
                    spec: Some(spec),
                    tokens: max,
                    last_fill_ms: now_ms,
                    used_ms: now_ms,
                };
                i
            }
        };
        let b = &mut ways[i];
        if b.spec != Some(spec) {
            // The rule changed under this key (a new configuration): start afresh.
            *b = Bucket {
                key,
                spec: Some(spec),
                tokens: max,
                last_fill_ms: now_ms,
                used_ms: now_ms,
            };
        }
        let fills = now_ms.saturating_sub(b.last_fill_ms) / fill_ms;
        if fills > 0 {
            let add = fills.saturating_mul(u64::from(per_fill));
            b.tokens = (u64::from(b.tokens) + add).min(u64::from(max)) as u32;
            b.last_fill_ms += fills * fill_ms;
        }
        b.used_ms = now_ms;
        let allowed = b.tokens > 0;
        if allowed {
            b.tokens -= 1;
        }
        Verdict {
            allowed,
            remaining: b.tokens,
            reset_ms: (b.last_fill_ms + fill_ms).saturating_sub(now_ms),
            evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: BucketSpec = BucketSpec {
        max_tokens: 3,
        tokens_per_fill: 1,
        fill_ms: 1000,
    };

    #[test]
    fn a_bucket_empties_and_refills() {
        let mut l = Limiter::new(0, 1);
        let got: Vec<bool> = (0..5).map(|_| l.take(42, SPEC, 0).allowed).collect();
        assert_eq!(got, [true, true, true, false, false]);
        let v = l.take(42, SPEC, 400);
        assert!(!v.allowed);
        assert_eq!(v.reset_ms, 600);
        assert!(l.take(42, SPEC, 1000).allowed, "one token per second");
        assert!(!l.take(42, SPEC, 1500).allowed);
        // Long idle: back to max, not beyond.
        let allowed = (0..10)
            .filter(|_| l.take(42, SPEC, 100_000).allowed)
            .count();
        assert_eq!(allowed, 3);
        // Another key has its own bucket.
        assert!(l.take(44, SPEC, 100_000).allowed);
    }

    #[test]
    fn workers_share_the_configured_bucket() {
        let spec = BucketSpec {
            max_tokens: 5,
            tokens_per_fill: 1,
            fill_ms: 100,
        };
        let mut total = 0;
        for w in 0..2 {
            let mut l = Limiter::new(w, 2);
            total += (0..10).filter(|_| l.take(9, spec, 0).allowed).count();
            // One token per fill over two workers: each refills every 200 ms.
            assert!(!l.take(9, spec, 100).allowed);
            assert!(l.take(9, spec, 200).allowed);
        }
        assert_eq!(total, 5, "3 + 2: the instance admits max_tokens");
        // Fewer tokens than workers: each still holds one.
        let one = BucketSpec {
            max_tokens: 1,
            ..spec
        };
        assert!(Limiter::new(1, 2).take(9, one, 0).allowed);
    }

    #[test]
    fn the_table_never_grows_and_counts_evictions() {
        let mut l = Limiter::new(0, 1);
        let mut evictions = 0;
        // An attacker's flood of distinct values: 10× the table.
        for k in 0..(SETS * WAYS * 10) as u64 {
            let h = {
                use std::hash::Hasher;
                let mut h = l.hasher();
                h.write_u64(k);
                h.finish()
            };
            evictions += usize::from(l.take(h, SPEC, k).evicted);
        }
        assert_eq!(l.table.len(), SETS * WAYS);
        assert!(evictions >= SETS * WAYS * 9 - SETS, "{evictions}");
        // A recently used key survives a flood into its own set only as long as it is
        // used; an evicted key starts again full (fail-open, documented).
        let mut l = Limiter::new(0, 1);
        for _ in 0..3 {
            l.take(2, SPEC, 0);
        }
        assert!(!l.take(2, SPEC, 0).allowed);
        for i in 1..=WAYS as u64 {
            // Same set: (key >> 1) % SETS equal.
            l.take(2 + (SETS as u64 * 2) * i, SPEC, 1 + i);
        }
        assert!(l.take(2, SPEC, 10).allowed, "evicted, so full again");
    }

    #[test]
    fn a_changed_rule_resets_its_bucket() {
        let mut l = Limiter::new(0, 1);
        for _ in 0..3 {
            l.take(5, SPEC, 0);
        }
        assert!(!l.take(5, SPEC, 0).allowed);
        let bigger = BucketSpec {
            max_tokens: 10,
            ..SPEC
        };
        assert!(l.take(5, bigger, 0).allowed);
    }
}
