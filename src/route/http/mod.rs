//! The compiled HTTP routing table: virtual hosts by `Host`, ordered routes with
//! precompiled matchers, and their actions.
//!
//! Built on the control plane from route configurations and `VirtualService`s; read by
//! workers with [`HttpRoutes::route`], which never allocates: host names are lowered into
//! a stack buffer, header and query lookups scan the parsed request in place, regexes are
//! compiled once here. Routes are bucketed by their first path segment so a lookup checks
//! the routes that can match this path (plus the ones that match any path), in order —
//! first match wins, as in Envoy. Each bucket entry carries a prefilter (literal length
//! and last 8 literal bytes) so most routes are skipped without being read; a route's
//! own conditions run cheapest first, a path regex last and, when its pattern opens with
//! a literal, only on the bytes after it. Invariant: the index only ever skips routes
//! that cannot match — a plain scan of `routes` must give the same answer (tested).

use std::time::Duration;

use regex::bytes::Regex;
// Fx hashing for the lookup maps: their keys come from configuration, not from
// requests, so a request cannot steer collisions; SipHash would cost more than the
// whole bucket scan.
use rustc_hash::FxHashMap as HashMap;

use crate::cluster::weighted;
use crate::config::http::{HeaderMatcher, RouteConfig, StringMatch, VirtualHost};
use crate::config::Config;

pub mod hash;
pub mod ratelimit;
use ratelimit::RateLimitRule;

/// What a request looks like to the router: borrowed from the parsed request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a [u8],
    /// Path without the query string.
    pub path: &'a [u8],
    /// Query string without the `?` (empty when none).
    pub query: &'a [u8],
    /// `Host` (or `:authority`), port included or not.
    pub host: &'a [u8],
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> RequestView<'a> {
    /// The first value of header `name` (ASCII case-insensitive).
    #[inline]
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The value of query parameter `name` (no percent-decoding; `a&b=` gives `a` → "").
    pub fn query_param(&self, name: &str) -> Option<&'a [u8]> {
        self.query.split(|&b| b == b'&').find_map(|kv| {
            let (k, v) = match kv.iter().position(|&b| b == b'=') {
                Some(i) => (&kv[..i], &kv[i + 1..]),
                None => (kv, &kv[kv.len()..]),
            };
            (k == name.as_bytes()).then_some(v)
        })
    }
}

// === compiled matchers ===

#[derive(Debug)]
enum StrCond {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<[u8]>),
    Regex(Regex),
    Present,
}

#[derive(Debug)]
struct ValueCond {
    cond: StrCond,
    ignore_case: bool,
}

impl ValueCond {
    fn compile(m: &StringMatch) -> Result<ValueCond, String> {
        let ic = m.ignore_case.unwrap_or(false);
        let lower = |s: &String| -> Box<[u8]> {
            if ic {
                s.to_ascii_lowercase().into_bytes().into()
            } else {
                s.as_bytes().into()
            }
        };
        let cond = if let Some(s) = &m.exact {
            StrCond::Exact(lower(s))
        } else if let Some(s) = &m.prefix {
            StrCond::Prefix(lower(s))
        } else if let Some(s) = &m.suffix {
            StrCond::Suffix(lower(s))
        } else if let Some(s) = &m.contains {
            StrCond::Contains(lower(s))
        } else if let Some(r) = &m.safe_regex {
            StrCond::Regex(full_regex(&r.regex, ic)?)
        } else {
            StrCond::Present
        };
        Ok(ValueCond {
            cond,
            ignore_case: ic,
        })
    }

    #[inline]
    fn matches(&self, v: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.cond {
            StrCond::Exact(x) => eq(v, x),
            StrCond::Prefix(x) => v.len() >= x.len() && eq(&v[..x.len()], x),
            StrCond::Suffix(x) => v.len() >= x.len() && eq(&v[v.len() - x.len()..], x),
            StrCond::Contains(x) => x.is_empty() || v.windows(x.len()).any(|w| eq(w, x)),
            StrCond::Regex(r) => r.is_match(v),
            StrCond::Present => true,
        }
    }
}

/// Envoy's `safe_regex` matches the whole value.
fn full_regex(re: &str, ignore_case: bool) -> Result<Regex, String> {
    let flags = if ignore_case { "(?i)" } else { "" };
    Regex::new(&format!("{flags}^(?:{re})$")).map_err(|e| e.to_string())
}

#[derive(Debug)]
struct HeaderCond {
    name: Box<str>,
    /// `None`: presence only.
    value: Option<ValueCond>,
    /// `present_match: false`: the header must be absent.
    absent: bool,
    invert: bool,
}

impl HeaderCond {
    fn compile(h: &HeaderMatcher) -> Result<HeaderCond, String> {
        let value = h
            .value_match()
            .map(|m| ValueCond::compile(&m))
            .transpose()?;
        Ok(HeaderCond {
            name: h.name.as_str().into(),
            value,
            absent: h.present_match == Some(false),
            invert: h.invert_match,
        })
    }

    #[inline]
    fn matches(&self, req: &RequestView) -> bool {
        let got = req.header(&self.name);
        let hit = match (&self.value, got) {
            _ if self.absent => got.is_none(),
            (None, g) => g.is_some(),
            (Some(c), Some(v)) => c.matches(v),
            (Some(_), None) => false,
        };
        hit != self.invert
    }
}

#[derive(Debug)]
enum PathCond {
    Any,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
}

#[derive(Debug)]
struct Matcher {
    path: PathCond,
    case_sensitive: bool,
    /// For a case-sensitive regex route: the literal bytes every matching path starts
    /// with (empty when none), checked before the regex runs.
    regex_lit: Box<[u8]>,
    /// The regex for what follows `regex_lit` (`^(?:rest)$`), when the pattern splits
    /// safely there: the same answer as the whole regex on the whole path, on fewer bytes.
    regex_rest: Option<Regex>,
    method: Option<Box<[u8]>>,
    headers: Box<[HeaderCond]>,
    query: Box<[(Box<str>, Option<ValueCond>)]>,
}

impl Matcher {
    /// All conditions must hold and none has side effects, so they are checked
    /// cheapest first: literal path bytes, method, headers, query, and a path regex last.
    #[inline]
    fn matches(&self, req: &RequestView) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.case_sensitive {
                bytes_eq(a, b)
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let path = req.path;
        let path_ok = match &self.path {
            PathCond::Any => true,
            PathCond::Exact(p) => eq(path, p),
            PathCond::Prefix(p) => path.len() >= p.len() && eq(&path[..p.len()], p),
            PathCond::Regex(_) => {
                let lit = &self.regex_lit;
                path.len() >= lit.len() && bytes_eq(&path[..lit.len()], lit)
            }
        };
        path_ok
            && self
                .method
                .as_deref()
                .is_none_or(|m| bytes_eq(m, req.method))
            && self.headers.iter().all(|h| h.matches(req))
            && self
                .query
                .iter()
                .all(|(name, cond)| match (req.query_param(name), cond) {
                    (Some(v), Some(c)) => c.matches(v),
                    (Some(_), None) => true,
                    (None, _) => false,
                })
            && match (&self.path, &self.regex_rest) {
                (PathCond::Regex(_), Some(rest)) => rest.is_match(&path[self.regex_lit.len()..]),
                (PathCond::Regex(r), None) => r.is_match(path),
                _ => true,
            }
    }

    /// The prefilter of this route for [`VHost`]'s candidate lists.
    fn candidate(&self, route: u32) -> Candidate {
        let (lit, exact): (&[u8], bool) = match &self.path {
            _ if !self.case_sensitive => (&[], false),
            PathCond::Exact(p) => (p, true),
            PathCond::Prefix(p) => (p, false),
            PathCond::Regex(_) => (&self.regex_lit, false),
            PathCond::Any => (&[], false),
        };
        let n = lit.len();
        let tail = if n >= 8 {
            word8(&lit[n - 8..])
        } else {
            head_word(lit)
        };
        Candidate {
            route,
            // A literal too long for u32 is not prefiltered (the full match decides).
            lit_len: u32::try_from(n).unwrap_or(0),
            exact: exact && u32::try_from(n).is_ok(),
            tail: if u32::try_from(n).is_ok() { tail } else { 0 },
        }
    }

    /// The literal first path segment every matching path starts with, if there is one
    /// (`/api/v1` → `api`), for bucketing.
    fn first_segment(&self) -> Option<&[u8]> {
        if !self.case_sensitive {
            return None;
        }
        let lit: &[u8] = match &self.path {
            PathCond::Exact(p) => return Some(first_segment(p)),
            PathCond::Prefix(p) => p,
            PathCond::Regex(r) => regex_literal_prefix(r.as_str())?,
            PathCond::Any => return None,
        };
        // A prefix only pins the segment when it runs past it (`/api/` or `/api/x`).
        let seg = first_segment(lit);
        (lit.len() > seg.len() + 1).then_some(seg)
    }
}

/// A route's cheap prefilter, kept densely in the candidate lists of a [`VHost`] so a
/// lookup skips most routes without touching them: a matching path is at least
/// `lit_len` bytes long (exactly, when `exact`) and its bytes up to `lit_len` end with
/// the route's literal's last 8 bytes (`tail`; shorter literals: all of them, zero
/// padded). `lit_len == 0` passes every path.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    route: u32,
    lit_len: u32,
    exact: bool,
    tail: u64,
}

impl Candidate {
    /// `false` only when the route cannot match `path`; `head` is [`head_word`]`(path)`.
    #[inline]
    fn may_match(&self, path: &[u8], head: u64) -> bool {
        let n = self.lit_len as usize;
        if path.len() < n || (self.exact && path.len() != n) {
            return false;
        }
        if n >= 8 {
            word8(&path[n - 8..n]) == self.tail
        } else {
            // `n < 8`: the low `n` bytes; `head` is zero past the path's end.
            let mask = (1u64 << (8 * n)) - 1;
            head & mask == self.tail
        }
    }
}

/// Bytes 0..8 of a slice of at least 8, as a little-endian word.
#[inline]
fn word8(s: &[u8]) -> u64 {
    // `try_into` of an exactly 8-byte subslice cannot fail.
    u64::from_le_bytes(s[..8].try_into().expect("8 bytes"))
}

/// The first 8 bytes of `s` as a little-endian word, zero padded when shorter.
#[inline]
fn head_word(s: &[u8]) -> u64 {
    if s.len() >= 8 {
        return word8(s);
    }
    let mut b = [0u8; 8];
    b[..s.len()].copy_from_slice(s);
    u64::from_le_bytes(b)
}

/// The literal text every match of a compiled whole-path regex (`^(?:…)$`, see
/// [`full_regex`]) starts with, or `None` when there is none that is safe to rely on:
/// any alternation, or a pattern that opens with a metacharacter. A literal character
/// followed by a quantifier is optional, so it is left out.
fn regex_literal_prefix(compiled: &str) -> Option<&[u8]> {
    split_regex(compiled).map(|(lit, _)| lit)
}

/// [`regex_literal_prefix`] and the pattern text after it (`None` when the literal ends
/// inside a multi-byte character). Matching `^(?:rest)$` on the bytes after the literal
/// is the same as the whole regex on the whole path when `rest` looks at nothing
/// before it; callers check that with [`rest_is_context_free`].
fn split_regex(compiled: &str) -> Option<(&[u8], Option<&str>)> {
    let inner = compiled.strip_prefix("^(?:")?.strip_suffix(")$")?;
    if inner.contains('|') {
        return None;
    }
    let inner = inner.strip_prefix('^').unwrap_or(inner);
    let bytes = inner.as_bytes();
    let stop = bytes
        .iter()
        .position(|b| br"\.+*?()|[]{}^$".contains(b))
        .unwrap_or(bytes.len());
    let end = match bytes.get(stop) {
        Some(b'*' | b'?' | b'+' | b'{') => stop.saturating_sub(1),
        _ => stop,
    };
    (end > 0).then(|| (&bytes[..end], inner.get(end..)))
}

/// Whether a regex tail split off by [`split_regex`] can be matched on its own: it
/// has no assertion that looks at what precedes it (`^`, `\b`, `\B`, `\A`, `\<`, `\>`) and no flag group
/// (`(?`), which could change how it reads. Conservative: any doubt says no.
fn rest_is_context_free(rest: &str) -> bool {
    let b = rest.as_bytes();
    !rest.contains('^')
        && !rest.contains("(?")
        && !b
            .windows(2)
            .any(|w| w[0] == b'\\' && matches!(w[1], b'b' | b'B' | b'A' | b'<' | b'>'))
}

/// Byte equality for the short literals of routes: a word-at-a-time compare inlined
/// here costs less than a call to libc's `memcmp` for strings of a few dozen bytes.
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // `try_into` on an 8- or 4-byte subslice cannot fail.
    let w8 = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let w4 = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"));
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if w8(a, i) != w8(b, i) {
                return false;
            }
            i += 8;
        }
        // The last word overlaps the one before when `n` is not a multiple of 8.
        w8(a, n - 8) == w8(b, n - 8)
    } else if n >= 4 {
        w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4)
    } else {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
}

/// `/api/v1?x` → `api`; `/` → empty.
#[inline]
fn first_segment(path: &[u8]) -> &[u8] {
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    &rest[..end]
}

// === actions ===

/// Where a forwarded request goes: a cluster index in the route table, or a weighted
/// split across several.
#[derive(Debug, Clone)]
pub enum ClusterTarget {
    One(u32),
    Weighted {
        cumulative: Box<[u32]>,
        clusters: Box<[u32]>,
    },
}

impl ClusterTarget {
    #[inline]
    pub fn pick(&self, r: u32) -> u32 {
        match self {
            ClusterTarget::One(c) => *c,
            ClusterTarget::Weighted {
                cumulative,
                clusters,
            } => clusters[weighted(cumulative, r)],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: u32,
    /// Share of requests mirrored, in parts per million.
    pub per_million: u32,
}

/// Envoy's `regex_rewrite`: every match of `re` in the path (the query string is
/// kept as it is) replaced by the substitution, whose `\N` are capture groups.
#[derive(Debug)]
pub struct RegexRewrite {
    pub re: Regex,
    parts: Box<[Part]>,
}

#[derive(Debug)]
enum Part {
    Lit(Box<[u8]>),
    Group(usize),
}

impl RegexRewrite {
    fn compile(r: &crate::config::http::RegexRewrite) -> Result<RegexRewrite, String> {
        let re = Regex::new(&r.pattern.regex).map_err(|e| format!("regex_rewrite: {e}"))?;
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut it = r.substitution.bytes().peekable();
        while let Some(b) = it.next() {
            match (b, it.peek().copied()) {
                (b'\\', Some(d @ b'0'..=b'9')) => {
                    it.next();
                    let g = usize::from(d - b'0');
                    if g >= re.captures_len() {
                        return Err(format!(
                            "regex_rewrite: substitution uses \\{g} but the pattern has {} group(s)",
                            re.captures_len() - 1
                        ));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit).into()));
                    }
                    parts.push(Part::Group(g));
                }
                (b'\\', Some(b'\\')) => {
                    it.next();
                    lit.push(b'\\');
                }
                _ => lit.push(b),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        Ok(RegexRewrite {
            re,
            parts: parts.into(),
        })
    }

    /// Append `path` rewritten to `out`. `locs` must come from `self.re`
    /// (`re.capture_locations()`, kept by the caller so this does not allocate).
    pub fn apply(&self, path: &[u8], locs: &mut regex::bytes::CaptureLocations, out: &mut Vec<u8>) {
        let (mut last, mut pos) = (0, 0);
        while pos <= path.len() {
            let Some(m) = self.re.captures_read_at(locs, path, pos) else {
                break;
            };
            let (s, e) = (m.start(), m.end());
            out.extend_from_slice(&path[last..s]);
            for p in self.parts.iter() {
                match p {
                    Part::Lit(l) => out.extend_from_slice(l),
                    Part::Group(g) => {
                        if let Some((a, b)) = locs.get(*g) {
                            out.extend_from_slice(&path[a..b]);
                        }
                    }
                }
            }
            last = e;
            // An empty match moves on by one byte (as RE2's global replace does).
            pos = if e == s { e + 1 } else { e };
        }
        out.extend_from_slice(&path[last.min(path.len())..]);
    }
}

#[derive(Debug, Clone, Default)]
pub struct Retry {
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_retriable_4xx: bool,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
}

#[derive(Debug)]
pub enum Action {
    Forward {
        target: ClusterTarget,
        timeout: Option<Duration>,
        prefix_rewrite: Option<Box<[u8]>>,
        regex_rewrite: Option<RegexRewrite>,
        retry: Option<Retry>,
        mirrors: Box<[Mirror]>,
    },
    Redirect {
        status: u16,
        host: Option<Box<str>>,
        path: Option<Box<str>>,
    },
    Direct {
        status: u16,
        body: Box<[u8]>,
    },
}

/// How an added header combines with one the message already has (Envoy's
/// `append_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// `APPEND_IF_EXISTS_OR_ADD` (default): one more header line.
    Append,
    /// `ADD_IF_ABSENT`.
    IfAbsent,
    /// `OVERWRITE_IF_EXISTS_OR_ADD`: existing lines of that name are dropped.
    Overwrite,
}

/// One header to add: lowercase name, value, how it combines.
pub type AddHeader = (Box<str>, Box<[u8]>, Append);

/// Header edits of one level (route or virtual host), compiled.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub add: Box<[AddHeader]>,
    /// Lowercase names.
    pub remove: Box<[Box<str>]>,
}

impl HeaderOps {
    fn compile(
        add: &[crate::config::http::HeaderValueOption],
        remove: &[String],
    ) -> Result<HeaderOps, String> {
        let add = add
            .iter()
            .map(|h| {
                let a = match h.append_action.as_deref() {
                    None | Some("APPEND_IF_EXISTS_OR_ADD") => Append::Append,
                    Some("ADD_IF_ABSENT") => Append::IfAbsent,
                    Some("OVERWRITE_IF_EXISTS_OR_ADD") => Append::Overwrite,
                    Some(x) => return Err(format!("unsupported append_action `{x}`")),
                };
                Ok((
                    h.header.key.to_ascii_lowercase().into(),
                    h.header.value.as_bytes().into(),
                    a,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(HeaderOps {
            add,
            remove: remove
                .iter()
                .map(|r| r.to_ascii_lowercase().into())
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a header of this name is dropped (removed, or overwritten).
    #[inline]
    pub fn drops(&self, name: &str) -> bool {
        self.remove.iter().any(|r| name.eq_ignore_ascii_case(r))
            || self
                .add
                .iter()
                .any(|(n, _, a)| *a == Append::Overwrite && name.eq_ignore_ascii_case(n))
    }
}

#[derive(Debug)]
pub struct HttpRoute {
    pub name: Option<Box<str>>,
    matcher: Matcher,
    pub action: Action,
    /// Position in its virtual host's `routes`.
    pub index: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Local rate limits of a forwarding route (its action's `rate_limits`).
    pub rate_limits: Box<[RateLimitRule]>,
    /// SPIFFE IDs allowed to use the route; empty: any client.
    pub principals: Box<[Box<str>]>,
    /// A forwarding route's `hash_policy` (consistent hashing key), when it has one.
    pub hash: Option<Box<hash::RouteHash>>,
}

impl HttpRoute {
    /// Whether a client with this identity (from its certificate) may use the route.
    #[inline]
    pub fn allows(&self, identity: Option<&str>) -> bool {
        self.principals.is_empty()
            || identity.is_some_and(|id| self.principals.iter().any(|p| **p == *id))
    }

    #[inline]
    pub fn matches(&self, req: &RequestView) -> bool {
        self.matcher.matches(req)
    }

    /// The path prefix this route matches on, if it is a prefix route (what a
    /// `prefix_rewrite` replaces).
    pub fn path_prefix(&self) -> Option<&[u8]> {
        match &self.matcher.path {
            PathCond::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct VHost {
    pub name: Box<str>,
    /// Position in [`HttpRoutes::vhosts`].
    pub index: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Rate limits for the forwarding routes that have none of their own.
    pub rate_limits: Box<[RateLimitRule]>,
    pub routes: Box<[HttpRoute]>,
    /// Routes by literal first path segment; each list in route order.
    by_segment: HashMap<Box<[u8]>, Box<[Candidate]>>,
    /// Routes that can match any first segment; in route order.
    any_segment: Box<[Candidate]>,
}

impl VHost {
    /// The first route that matches, in configuration order.
    #[inline]
    pub fn route(&self, req: &RequestView) -> Option<&HttpRoute> {
        let path = req.path;
        let bucket: &[Candidate] = self.by_segment.get(first_segment(path)).map_or(&[], |b| b);
        let head = head_word(path);
        // Merge the two lists (each in route order) so configuration order is kept.
        let (mut i, mut j) = (0, 0);
        loop {
            let next = match (bucket.get(i), self.any_segment.get(j)) {
                (Some(a), Some(b)) if a.route < b.route => {
                    i += 1;
                    a
                }
                (_, Some(b)) => {
                    j += 1;
                    b
                }
                (Some(a), None) => {
                    i += 1;
                    a
                }
                (None, None) => return None,
            };
            if !next.may_match(path, head) {
                continue;
            }
            let r = &self.routes[next.route as usize];
            if r.matches(req) {
                return Some(r);
            }
        }
    }
}

/// Virtual hosts by domain.
#[derive(Debug, Default)]
pub struct HttpRoutes {
    pub vhosts: Box<[VHost]>,
    exact: HashMap<Box<[u8]>, u32>,
    /// `*.example.com` stored as `.example.com`.
    suffixes: Wildcards,
    /// `api.*` stored as `api.`.
    prefixes: Wildcards,
    any: Option<u32>,
}

/// Wildcard domains of one kind, keyed by their literal part. A lookup tries each
/// literal length present, longest first, as one hash probe (Envoy's longest-wildcard
/// rule): cost grows with the number of distinct lengths, not of domains.
#[derive(Debug, Default)]
struct Wildcards {
    by_literal: HashMap<Box<[u8]>, u32>,
    /// Distinct literal lengths, longest first.
    lens: Box<[usize]>,
}

impl Wildcards {
    fn build(mut list: Vec<(Box<[u8]>, u32)>) -> Wildcards {
        let mut lens: Vec<usize> = list.iter().map(|(l, _)| l.len()).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        let mut by_literal = HashMap::default();
        for (lit, vi) in list.drain(..) {
            // The first virtual host naming a domain keeps it.
            by_literal.entry(lit).or_insert(vi);
        }
        Wildcards {
            by_literal,
            lens: lens.into(),
        }
    }

    fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The virtual host of the longest literal that ends (`suffix`) or starts `host`;
    /// the wildcard stands for at least one byte.
    fn find(&self, host: &[u8], suffix: bool) -> Option<u32> {
        self.lens
            .iter()
            .filter(|&&l| host.len() > l)
            .find_map(|&l| {
                let part = if suffix {
                    &host[host.len() - l..]
                } else {
                    &host[..l]
                };
                self.by_literal.get(part).copied()
            })
    }
}

/// Longest `Host` we match against (RFC 1035 names are ≤ 253 bytes, plus a port).
const MAX_HOST: usize = 272;

impl HttpRoutes {
    /// The virtual host for a `Host` value: exact, then longest `*.suffix`, then longest
    /// `prefix.*`, then `*` (Envoy's order).
    pub fn vhost(&self, host: &[u8]) -> Option<&VHost> {
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            // Only `*` (or nothing): no need to look at the name.
            return self.any.map(|i| &self.vhosts[i as usize]);
        }
        let host = strip_port(host);
        if host.len() > MAX_HOST {
            return self.any.map(|i| &self.vhosts[i as usize]);
        }
        let i = if host.iter().any(u8::is_ascii_uppercase) {
            // Domains are stored lowercase; a lowercase `Host` (the usual one) is
            // matched as it is, without the copy.
            let mut buf = [0u8; MAX_HOST];
            let h = &mut buf[..host.len()];
            h.copy_from_slice(host);
            h.make_ascii_lowercase();
            self.vhost_index(h)
        } else {
            self.vhost_index(host)
        }?;
        Some(&self.vhosts[i as usize])
    }

    /// [`Self::vhost`] for a lowercase name without port.
    #[inline]
    fn vhost_index(&self, h: &[u8]) -> Option<u32> {
        self.exact
            .get(h)
            .copied()
            .or_else(|| self.suffixes.find(h, true))
            .or_else(|| self.prefixes.find(h, false))
            .or(self.any)
    }

    /// Route a request: its virtual host and first matching route.
    #[inline]
    pub fn route(&self, req: &RequestView) -> Option<(&VHost, &HttpRoute)> {
        let vh = self.vhost(req.host)?;
        vh.route(req).map(|r| (vh, r))
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        // [v6]:port
        return match host.iter().position(|&b| b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

// === compilation ===

/// Resolves a cluster name used by a route to its index in the route table (adding an
/// implicit `strict_dns` cluster for names that are not defined, as a sidecar does).
pub trait ClusterIndex {
    fn index(&mut self, name: &str) -> u32;
}

/// The virtual hosts an `http` listener serves: one route configuration, or all of them
/// plus every `VirtualService`.
pub fn virtual_hosts_for(cfg: &Config, route_config: Option<&str>) -> Vec<VirtualHost> {
    let configs: Vec<&RouteConfig> = match route_config {
        Some(name) => cfg
            .route_configs
            .iter()
            .filter(|r| r.name == name)
            .collect(),
        None => cfg.route_configs.iter().collect(),
    };
    let mut out: Vec<VirtualHost> = configs
        .iter()
        .flat_map(|r| r.effective_virtual_hosts())
        .collect();
    if route_config.is_none() {
        out.extend(cfg.virtual_services.iter().map(|vs| vs.to_virtual_host()));
    }
    out
}

pub fn compile(
    vhosts: &[VirtualHost],
    clusters: &mut dyn ClusterIndex,
) -> Result<HttpRoutes, String> {
    let mut out = HttpRoutes::default();
    let mut compiled = Vec::with_capacity(vhosts.len());
    let (mut suffixes, mut prefixes) = (Vec::new(), Vec::new());
    for (vi, vh) in vhosts.iter().enumerate() {
        let vi = vi as u32;
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            if d == "*" {
                out.any.get_or_insert(vi);
            } else if let Some(s) = d.strip_prefix('*') {
                suffixes.push((Box::<[u8]>::from(s.as_bytes()), vi));
            } else if let Some(p) = d.strip_suffix('*') {
                prefixes.push((Box::<[u8]>::from(p.as_bytes()), vi));
            } else {
                out.exact.entry(d.into_bytes().into()).or_insert(vi);
            }
        }
        let mut c = compile_vhost(vh, vi, clusters)
            .map_err(|e| format!("virtual host `{}`: {e}", vh.name))?;
        c.index = vi;
        compiled.push(c);
    }
    out.suffixes = Wildcards::build(suffixes);
    out.prefixes = Wildcards::build(prefixes);
    out.vhosts = compiled.into();
    Ok(out)
}

fn compile_vhost(
    vh: &VirtualHost,
    vi: u32,
    clusters: &mut dyn ClusterIndex,
) -> Result<VHost, String> {
    let mut routes = Vec::with_capacity(vh.routes.len());
    let mut by_segment: HashMap<Box<[u8]>, Vec<Candidate>> = HashMap::default();
    let mut any_segment = Vec::new();
    for (i, r) in vh.routes.iter().enumerate() {
        let m = &r.matcher;
        let case_sensitive = m.case_sensitive.unwrap_or(true);
        let path = if let Some(p) = &m.path {
            PathCond::Exact(p.as_bytes().into())
        } else if let Some(p) = &m.prefix {
            PathCond::Prefix(p.as_bytes().into())
        } else if let Some(r) = &m.safe_regex {
            PathCond::Regex(
                full_regex(&r.regex, !case_sensitive).map_err(|e| format!("route {i}: {e}"))?,
            )
        } else {
            PathCond::Any
        };
        let (regex_lit, regex_rest) = match &path {
            PathCond::Regex(r) if case_sensitive => match split_regex(r.as_str()) {
                Some((lit, Some(rest))) if rest_is_context_free(rest) => (
                    lit.into(),
                    // The tail of a pattern that compiled whole compiles too; if it
                    // somehow does not, the whole regex is used.
                    Regex::new(&format!("^(?:{rest})$")).ok(),
                ),
                Some((lit, _)) => (lit.into(), None),
                None => (Box::default(), None),
            },
            _ => (Box::default(), None),
        };
        let matcher = Matcher {
            path,
            case_sensitive,
            regex_lit,
            regex_rest,
            method: m.method.as_ref().map(|x| x.as_bytes().into()),
            headers: m
                .headers
                .iter()
                .map(HeaderCond::compile)
                .collect::<Result<_, _>>()?,
            query: m
                .query_parameters
                .iter()
                .map(|q| {
                    Ok((
                        q.name.as_str().into(),
                        q.string_match
                            .as_ref()
                            .map(ValueCond::compile)
                            .transpose()?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        };
        let cand = matcher.candidate(i as u32);
        match matcher.first_segment() {
            Some(seg) => by_segment.entry(seg.into()).or_default().push(cand),
            None => any_segment.push(cand),
        }
        let action = if let Some(a) = &r.route {
            let target = match (&a.cluster, &a.weighted_clusters) {
                (Some(c), _) => ClusterTarget::One(clusters.index(c)),
                (None, Some(w)) => ClusterTarget::Weighted {
                    cumulative: crate::cluster::cumulative(
                        &w.clusters.iter().map(|c| c.weight).collect::<Vec<_>>(),
                    ),
                    clusters: w.clusters.iter().map(|c| clusters.index(&c.name)).collect(),
                },
                (None, None) => return Err(format!("route {i} has no cluster")),
            };
            let retry = a.retry_policy.as_ref().map(|p| {
                let on = |t: &str| p.retry_on.split(',').any(|x| x.trim() == t);
                let base = p
                    .retry_back_off
                    .as_ref()
                    .and_then(|b| b.base_interval)
                    .unwrap_or(Duration::from_millis(25));
                Retry {
                    on_5xx: on("5xx"),
                    on_gateway_error: on("gateway-error") || on("5xx"),
                    on_connect_failure: on("connect-failure") || on("5xx") || on("gateway-error"),
                    on_reset: on("reset") || on("5xx"),
                    on_retriable_4xx: on("retriable-4xx"),
                    num_retries: p.num_retries.unwrap_or(1),
                    per_try_timeout: p.per_try_timeout,
                    base_interval: base,
                    max_interval: p
                        .retry_back_off
                        .as_ref()
                        .and_then(|b| b.max_interval)
                        .unwrap_or(base * 10),
                }
            });
            Action::Forward {
                target,
                timeout: a.timeout,
                prefix_rewrite: a.prefix_rewrite.as_ref().map(|p| p.as_bytes().into()),
                regex_rewrite: a
                    .regex_rewrite
                    .as_ref()
                    .map(RegexRewrite::compile)
                    .transpose()
                    .map_err(|e| format!("route {i}: {e}"))?,
                retry,
                mirrors: a
                    .request_mirror_policies
                    .iter()
                    .map(|m| Mirror {
                        cluster: clusters.index(&m.cluster),
                        per_million: m
                            .runtime_fraction
                            .as_ref()
                            .map_or(1_000_000, |f| f.default_value.per_million() as u32),
                    })
                    .collect(),
            }
        } else if let Some(rd) = &r.redirect {
            Action::Redirect {
                status: match rd.response_code.as_deref() {
                    Some("FOUND") => 302,
                    Some("SEE_OTHER") => 303,
                    Some("TEMPORARY_REDIRECT") => 307,
                    Some("PERMANENT_REDIRECT") => 308,
                    _ => 301,
                },
                host: rd.host_redirect.as_deref().map(Into::into),
                path: rd.path_redirect.as_deref().map(Into::into),
            }
        } else if let Some(d) = &r.direct_response {
            Action::Direct {
                status: d.status,
                body: d
                    .body
                    .as_ref()
                    .map(|b| b.inline_string.as_bytes().into())
                    .unwrap_or_default(),
            }
        } else {
            return Err(format!("route {i} has no action"));
        };
        let rate_limits = match &r.route {
            Some(a) => ratelimit::compile_all(&a.rate_limits, u64::from(vi) << 32 | (i as u64 + 1))
                .map_err(|e| format!("route {i}: {e}"))?,
            None => Box::default(),
        };
        for p in &r.allowed_principals {
            crate::tls::check_spiffe(p)
                .map_err(|e| format!("route {i}: allowed_principals: {e}"))?;
        }
        let hash = match &r.route {
            Some(a) => hash::RouteHash::compile(&a.hash_policy)
                .map_err(|e| format!("route {i}: {e}"))?
                .map(Box::new),
            None => None,
        };
        routes.push(HttpRoute {
            hash,
            principals: r
                .allowed_principals
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
            rate_limits,
            name: r.name.as_deref().map(Into::into),
            matcher,
            action,
            index: i as u32,
            request_headers: HeaderOps::compile(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
            )
            .map_err(|e| format!("route {i}: {e}"))?,
            response_headers: HeaderOps::compile(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
            )
            .map_err(|e| format!("route {i}: {e}"))?,
        });
    }
    Ok(VHost {
        name: vh.name.as_str().into(),
        index: 0,
        request_headers: HeaderOps::compile(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
        )?,
        response_headers: HeaderOps::compile(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
        )?,
        rate_limits: ratelimit::compile_all(&vh.rate_limits, u64::from(vi) << 32)?,
        routes: routes.into(),
        by_segment: by_segment.into_iter().map(|(k, v)| (k, v.into())).collect(),
        any_segment: any_segment.into(),
    })
}

#[cfg(test)]
mod tests;
