//! Local rate limits compiled from Envoy's `rate_limits` (route or virtual host): the
//! actions that build a request's descriptor, and the token bucket its requests share.
//!
//! Owns only the descriptor: [`RateLimitRule::descriptor`] feeds the entries a request
//! produces into a hasher (the worker's keyed one, so clients cannot choose collisions)
//! without allocating; the buckets live per worker in
//! [`proxy::http::ratelimit`](crate::proxy::http::ratelimit).
//!
//! Envoy's semantics, kept: `header_value_match` yields `(descriptor_key or
//! "header_match", descriptor_value)` when the headers match as `expect_match` says;
//! `request_headers` yields `(descriptor_key, value)`, and a missing header drops the
//! whole descriptor unless `skip_if_absent`; `remote_address` yields the client's IP;
//! `generic_key` yields `(descriptor_key or "generic_key", descriptor_value)`. A rule
//! whose descriptor is not produced does not limit the request. Route rules replace the
//! virtual host's (Envoy's default `include_vh_rate_limits: false`).

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use super::{HeaderCond, RequestView};
use crate::config::http::{RateLimit, RateLimitAction};

/// A token bucket as configured (for the whole proxy; workers take shares of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_ms: u64,
}

#[derive(Debug)]
enum DescAction {
    HeaderMatch {
        headers: Box<[HeaderCond]>,
        expect_match: bool,
        key: Box<[u8]>,
        value: Box<[u8]>,
    },
    RequestHeader {
        header: Box<str>,
        key: Box<[u8]>,
        skip_if_absent: bool,
    },
    RemoteAddress,
    Generic {
        key: Box<[u8]>,
        value: Box<[u8]>,
    },
}

#[derive(Debug)]
pub struct RateLimitRule {
    /// Names the rule within the table (virtual host, route, position): part of every
    /// bucket key, so two rules never share buckets.
    pub id: u64,
    actions: Box<[DescAction]>,
    /// `None`: the descriptor is computed but nothing limits it (Envoy sends such
    /// descriptors to a global rate-limit service, which tickmesh does not have).
    pub bucket: Option<BucketSpec>,
}

impl RateLimitRule {
    pub fn compile(rl: &RateLimit, id: u64) -> Result<RateLimitRule, String> {
        let actions = rl
            .actions
            .iter()
            .map(compile_action)
            .collect::<Result<_, _>>()?;
        let bucket = rl.token_bucket.as_ref().map(|tb| BucketSpec {
            max_tokens: tb.max_tokens.max(1),
            tokens_per_fill: tb.tokens_per_fill.unwrap_or(1).max(1),
            fill_ms: tb
                .fill_interval
                .unwrap_or(Duration::from_secs(1))
                .as_millis()
                .clamp(1, u128::from(u64::MAX)) as u64,
        });
        Ok(RateLimitRule {
            id,
            actions,
            bucket,
        })
    }

    /// Feed this request's descriptor into `h`; `false` when an action produced no entry
    /// (the rule does not apply to the request).
    pub fn descriptor(&self, req: &RequestView, peer: Option<IpAddr>, h: &mut impl Hasher) -> bool {
        h.write_u64(self.id);
        for a in self.actions.iter() {
            match a {
                DescAction::HeaderMatch {
                    headers,
                    expect_match,
                    key,
                    value,
                } => {
                    if headers.iter().all(|c| c.matches(req)) != *expect_match {
                        return false;
                    }
                    entry(h, key, value);
                }
                DescAction::RequestHeader {
                    header,
                    key,
                    skip_if_absent,
                } => match req.header(header) {
                    Some(v) => entry(h, key, v),
                    None if *skip_if_absent => {}
                    None => return false,
                },
                DescAction::RemoteAddress => {
                    let Some(ip) = peer else { return false };
                    match ip {
                        IpAddr::V4(a) => entry(h, b"remote_address", &a.octets()),
                        IpAddr::V6(a) => entry(h, b"remote_address", &a.octets()),
                    }
                }
                DescAction::Generic { key, value } => entry(h, key, value),
            }
        }
        true
    }
}

#[inline]
fn entry(h: &mut impl Hasher, key: &[u8], value: &[u8]) {
    // Lengths first: ("ab", "c") and ("a", "bc") must not hash alike.
    h.write_usize(key.len());
    h.write(key);
    h.write_usize(value.len());
    h.write(value);
}

fn compile_action(a: &RateLimitAction) -> Result<DescAction, String> {
    if let Some(m) = &a.header_value_match {
        return Ok(DescAction::HeaderMatch {
            headers: m
                .headers
                .iter()
                .map(HeaderCond::compile)
                .collect::<Result<_, _>>()?,
            expect_match: m.expect_match.unwrap_or(true),
            key: m
                .descriptor_key
                .as_deref()
                .unwrap_or("header_match")
                .as_bytes()
                .into(),
            value: m
                .descriptor_value
                .as_deref()
                .unwrap_or("")
                .as_bytes()
                .into(),
        });
    }
    if let Some(r) = &a.request_headers {
        return Ok(DescAction::RequestHeader {
            header: r.header_name.as_str().into(),
            key: r.descriptor_key.as_bytes().into(),
            skip_if_absent: r.skip_if_absent,
        });
    }
    if a.remote_address.is_some() {
        return Ok(DescAction::RemoteAddress);
    }
    if let Some(g) = &a.generic_key {
        return Ok(DescAction::Generic {
            key: g
                .descriptor_key
                .as_deref()
                .unwrap_or("generic_key")
                .as_bytes()
                .into(),
            value: g.descriptor_value.as_bytes().into(),
        });
    }
    Err("a rate limit action needs one of header_value_match, request_headers, remote_address, generic_key".into())
}

/// Compile a level's `rate_limits`; `level` distinguishes virtual hosts and routes in
/// the rule ids.
pub fn compile_all(rls: &[RateLimit], level: u64) -> Result<Box<[RateLimitRule]>, String> {
    rls.iter()
        .enumerate()
        .map(|(i, rl)| {
            let rule = RateLimitRule::compile(rl, level << 8 | i as u64)
                .map_err(|e| format!("rate_limits[{i}]: {e}"))?;
            if rule.bucket.is_none() {
                tracing::warn!(
                    "rate_limits[{i}] has no token_bucket: its descriptor limits nothing \
                     (tickmesh has local buckets only; add token_bucket: {{max_tokens, fill_interval}})"
                );
            }
            Ok(rule)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::http::RateLimit;
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

    fn rule(yaml: &str) -> RateLimitRule {
        let rl: RateLimit = serde_yaml::from_str(yaml).unwrap();
        RateLimitRule::compile(&rl, 7).unwrap()
    }

    fn key(r: &RateLimitRule, headers: &[(&str, &str)], peer: Option<IpAddr>) -> Option<u64> {
        let hs: Vec<httparse::Header> = headers
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        let view = RequestView {
            method: b"GET",
            path: b"/",
            query: b"",
            host: b"x",
            headers: &hs,
        };
        let mut h = BuildHasherDefault::<DefaultHasher>::default().build_hasher();
        r.descriptor(&view, peer, &mut h).then(|| h.finish())
    }

    #[test]
    fn the_seeds_header_value_match() {
        let r = rule(
            "actions:\n- header_value_match:\n    descriptor_key: canary_user\n    headers:\n    - name: x-user-id\n      safe_regex_match:\n        google_re2: {}\n        regex: \"^admin.*\"\n",
        );
        assert!(r.bucket.is_none());
        assert!(key(&r, &[("x-user-id", "admin-7")], None).is_some());
        assert_eq!(
            key(&r, &[("x-user-id", "admin-7")], None),
            key(&r, &[("X-User-Id", "admin-1")], None),
            "one descriptor for every matching request"
        );
        assert!(key(&r, &[("x-user-id", "bob")], None).is_none());
        assert!(key(&r, &[], None).is_none());
    }

    #[test]
    fn request_headers_remote_address_generic_key() {
        let r = rule("actions:\n- request_headers: {header_name: x-user, descriptor_key: user}\n- generic_key: {descriptor_value: api}\ntoken_bucket: {max_tokens: 3, fill_interval: 1s}\n");
        assert_eq!(
            r.bucket,
            Some(BucketSpec {
                max_tokens: 3,
                tokens_per_fill: 1,
                fill_ms: 1000
            })
        );
        let a = key(&r, &[("x-user", "a")], None).unwrap();
        let b = key(&r, &[("x-user", "b")], None).unwrap();
        assert_ne!(a, b, "one bucket per header value");
        assert!(key(&r, &[], None).is_none(), "absent header: no descriptor");
        let skip = rule("actions:\n- request_headers: {header_name: x-user, descriptor_key: user, skip_if_absent: true}\n");
        assert!(key(&skip, &[], None).is_some());
        let ra = rule("actions:\n- remote_address: {}\n");
        let one = key(&ra, &[], Some("127.0.0.1".parse().unwrap())).unwrap();
        let two = key(&ra, &[], Some("127.0.0.2".parse().unwrap())).unwrap();
        assert_ne!(one, two);
        assert!(key(&ra, &[], None).is_none());
        let inverted = rule("actions:\n- header_value_match: {descriptor_value: anon, expect_match: false, headers: [{name: authorization, present_match: true}]}\n");
        assert!(key(&inverted, &[], None).is_some());
        assert!(key(&inverted, &[("authorization", "x")], None).is_none());
    }

    #[test]
    fn malformed_rules_are_refused() {
        let rl: RateLimit = serde_yaml::from_str("actions:\n- {}\n").unwrap();
        let e = RateLimitRule::compile(&rl, 0).unwrap_err();
        assert!(e.contains("needs one of"), "{e}");
        assert!(
            serde_yaml::from_str::<RateLimit>("actions:\n- destination_cluster: {}\n").is_err()
        );
        let bad_re: RateLimit = serde_yaml::from_str(
            "actions:\n- header_value_match: {descriptor_value: v, headers: [{name: a, safe_regex_match: {regex: \"(\"}}]}\n",
        )
        .unwrap();
        assert!(RateLimitRule::compile(&bad_re, 0).is_err());
    }
}
