//! A route's consistent-hashing key (Envoy `RouteAction.hash_policy`), compiled.
//!
//! Owns the evaluation of a route's hash policies for a request: each policy that finds
//! its input (a header, a cookie, a query parameter, the client's address) contributes
//! a 64-bit hash, combined in order as Envoy does (the running hash rotated left by one,
//! xor the new one), and a `terminal` policy that produced a hash ends the evaluation.
//! A cookie policy with a `ttl` makes up the cookie when the request has none (its value
//! derived from the client's address and port, as the cluster-level generated cookie is)
//! and the response sets it. Only read by workers: never allocates, never locks.
//!
//! Invariant: a policy hashes its input exactly as the cluster-level `hash_policy`
//! ([`super::super::ClusterEntry::request_key`]) does, so one policy on a route picks the
//! same endpoint for a request as the same key set on its cluster.

use std::net::SocketAddr;
use std::time::Duration;

use super::RequestView;
use crate::cluster::maglev::hash64;
use crate::config::http::HashPolicy;

/// The compiled `hash_policy` list of a route.
#[derive(Debug)]
pub struct RouteHash {
    policies: Box<[Policy]>,
    /// The generating cookie policy's name and `Set-Cookie` attributes (after the
    /// value: `; Max-Age=N; Path=P; HttpOnly` and CRLF).
    generated: Option<(Box<str>, Box<[u8]>)>,
}

#[derive(Debug)]
struct Policy {
    key: Key,
    terminal: bool,
}

#[derive(Debug)]
enum Key {
    Header(Box<str>),
    /// `true`: generated when absent (the route's one `ttl` cookie).
    Cookie(Box<str>, bool),
    Query(Box<str>),
    SourceIp,
}

impl RouteHash {
    /// Compile a validated `hash_policy` list (`None` when empty).
    pub fn compile(list: &[HashPolicy]) -> Result<Option<RouteHash>, String> {
        if list.is_empty() {
            return Ok(None);
        }
        let mut generated = None;
        let mut policies = Vec::with_capacity(list.len());
        for (i, h) in list.iter().enumerate() {
            let key = match (
                &h.header,
                &h.cookie,
                &h.query_parameter,
                &h.connection_properties,
            ) {
                (Some(hh), None, None, None) => Key::Header(hh.header_name.as_str().into()),
                (None, Some(c), None, None) => {
                    if let Some(ttl) = c.ttl {
                        if generated.is_some() {
                            return Err(format!(
                                "hash_policy[{i}]: a route generates at most one hash cookie"
                            ));
                        }
                        generated = Some((
                            c.name.as_str().into(),
                            cookie_attributes(ttl, c.path.as_deref()),
                        ));
                    }
                    Key::Cookie(c.name.as_str().into(), c.ttl.is_some())
                }
                (None, None, Some(q), None) => Key::Query(q.name.as_str().into()),
                (None, None, None, Some(cp)) if cp.source_ip => Key::SourceIp,
                _ => return Err(format!("hash_policy[{i}]: not a supported policy")),
            };
            policies.push(Policy {
                key,
                terminal: h.terminal,
            });
        }
        Ok(Some(RouteHash {
            policies: policies.into(),
            generated,
        }))
    }

    /// The request's hash key, and the value of the cookie to generate when the route's
    /// `ttl` cookie was absent (the key then includes the value the client will send
    /// back). `None` key: no policy found its input.
    pub fn key(
        &self,
        req: &RequestView,
        peer: Option<SocketAddr>,
    ) -> (Option<u64>, Option<[u8; 16]>) {
        let mut hash: Option<u64> = None;
        let mut made = None;
        for p in self.policies.iter() {
            let new = match &p.key {
                Key::Header(name) => req.header(name).map(|v| hash64(v, 0)),
                Key::Query(name) => req.query_param(name).map(|v| hash64(v, 0)),
                Key::SourceIp => peer.map(|a| match a {
                    SocketAddr::V4(s) => hash64(&s.ip().octets(), 0),
                    SocketAddr::V6(s) => hash64(&s.ip().octets(), 0),
                }),
                Key::Cookie(name, generate) => {
                    match req
                        .header("cookie")
                        .and_then(|c| super::super::cookie(c, name.as_bytes()))
                    {
                        Some(v) => Some(hash64(v, 0)),
                        None if *generate => super::super::generated_cookie_value(peer).map(|v| {
                            made = Some(v);
                            hash64(&v, 0)
                        }),
                        None => None,
                    }
                }
            };
            if let Some(n) = new {
                hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ n);
            }
            if p.terminal && hash.is_some() {
                break;
            }
        }
        (hash, made)
    }

    /// The generated cookie's name and attributes, for `Set-Cookie`.
    pub fn set_cookie_parts(&self) -> Option<(&[u8], &[u8])> {
        self.generated.as_ref().map(|(n, a)| (n.as_bytes(), &a[..]))
    }
}

/// `; Max-Age=N; Path=P; HttpOnly` and CRLF. A ttl of 0 makes a session cookie (Max-Age
/// 0 would delete it), as Envoy does.
pub(crate) fn cookie_attributes(ttl: Duration, path: Option<&str>) -> Box<[u8]> {
    let mut a = String::new();
    if ttl.as_secs() > 0 {
        a.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(p) = path {
        a.push_str(&format!("; Path={p}"));
    }
    a.push_str("; HttpOnly\r\n");
    a.into_bytes().into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::http::{HashConnection, HashCookie, HashHeader, HashQueryParameter};

    fn header(name: &str, terminal: bool) -> HashPolicy {
        HashPolicy {
            header: Some(HashHeader {
                header_name: name.into(),
            }),
            terminal,
            ..HashPolicy::default()
        }
    }

    fn view<'a>(query: &'a [u8], headers: &'a [httparse::Header<'a>]) -> RequestView<'a> {
        RequestView {
            method: b"GET",
            path: b"/",
            query,
            host: b"svc",
            headers,
        }
    }

    const PEER: Option<SocketAddr> = Some(SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, 0, 9),
        4000,
    )));

    #[test]
    fn policies_combine_in_order_and_terminal_stops() {
        let hs = [
            httparse::Header {
                name: "x-user",
                value: b"alice",
            },
            httparse::Header {
                name: "x-org",
                value: b"acme",
            },
        ];
        let req = view(b"", &hs);
        let (u, o) = (hash64(b"alice", 0), hash64(b"acme", 0));
        let one = RouteHash::compile(&[header("x-user", false)])
            .unwrap()
            .unwrap();
        assert_eq!(one.key(&req, PEER), (Some(u), None), "as the cluster's key");
        let two = RouteHash::compile(&[header("x-user", false), header("x-org", false)])
            .unwrap()
            .unwrap();
        assert_eq!(two.key(&req, PEER).0, Some(u.rotate_left(1) ^ o));
        let stop = RouteHash::compile(&[header("x-user", true), header("x-org", false)])
            .unwrap()
            .unwrap();
        assert_eq!(stop.key(&req, PEER).0, Some(u), "terminal with a hash");
        // A terminal policy that found nothing does not stop.
        let skip = RouteHash::compile(&[header("x-none", true), header("x-org", false)])
            .unwrap()
            .unwrap();
        assert_eq!(skip.key(&req, PEER).0, Some(o));
        let none = RouteHash::compile(&[header("x-none", false)])
            .unwrap()
            .unwrap();
        assert_eq!(none.key(&req, PEER), (None, None));
        assert!(RouteHash::compile(&[]).unwrap().is_none());
    }

    #[test]
    fn query_source_ip_and_cookies() {
        let hs = [httparse::Header {
            name: "Cookie",
            value: b"a=1; s=\"00ff\"",
        }];
        let req = view(b"x=1&user=bob", &hs);
        let q = RouteHash::compile(&[HashPolicy {
            query_parameter: Some(HashQueryParameter {
                name: "user".into(),
            }),
            ..HashPolicy::default()
        }])
        .unwrap()
        .unwrap();
        assert_eq!(q.key(&req, PEER).0, Some(hash64(b"bob", 0)));
        let ip = RouteHash::compile(&[HashPolicy {
            connection_properties: Some(HashConnection { source_ip: true }),
            ..HashPolicy::default()
        }])
        .unwrap()
        .unwrap();
        assert_eq!(ip.key(&req, PEER).0, Some(hash64(&[127, 0, 0, 9], 0)));
        assert_eq!(ip.key(&req, None).0, None);
        let cookie = |name: &str, ttl: Option<Duration>| {
            RouteHash::compile(&[HashPolicy {
                cookie: Some(HashCookie {
                    name: name.into(),
                    ttl,
                    path: ttl.map(|_| "/app".into()),
                }),
                ..HashPolicy::default()
            }])
            .unwrap()
            .unwrap()
        };
        let present = cookie("s", Some(Duration::from_secs(60)));
        assert_eq!(
            present.key(&req, PEER),
            (Some(hash64(b"00ff", 0)), None),
            "present: read, not made"
        );
        let absent = cookie("t", Some(Duration::from_secs(60)));
        let (k, made) = absent.key(&req, PEER);
        let v = made.expect("generated");
        assert_eq!(k, Some(hash64(&v, 0)), "hashed as it will come back");
        assert_eq!(Some(v), super::super::super::generated_cookie_value(PEER));
        assert_eq!(
            absent.set_cookie_parts(),
            Some((&b"t"[..], &b"; Max-Age=60; Path=/app; HttpOnly\r\n"[..]))
        );
        let plain = cookie("t", None);
        assert_eq!(plain.key(&req, PEER), (None, None), "no ttl: not made");
        assert_eq!(plain.set_cookie_parts(), None);
        let session = cookie("t", Some(Duration::ZERO));
        assert_eq!(
            session.set_cookie_parts().map(|p| p.1),
            Some(&b"; Path=/app; HttpOnly\r\n"[..])
        );
    }
}
