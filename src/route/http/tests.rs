use std::collections::HashMap;

use super::*;
use crate::config::{parse, Format};

#[derive(Default)]
struct Names(HashMap<String, u32>);

impl ClusterIndex for Names {
    fn index(&mut self, name: &str) -> u32 {
        let n = self.0.len() as u32;
        *self.0.entry(name.to_string()).or_insert(n)
    }
}

const ROUTES: &str = r#"
route_configs:
- name: main
  virtual_hosts:
  - name: api
    domains: ["api.example.com", "*.api.example.com"]
    routes:
    - match: {prefix: "/v1/orders", method: POST}
      route: {cluster: orders-write}
    - match:
        prefix: "/v1/orders"
        headers: [{name: x-env, string_match: {exact: canary}}]
      route: {cluster: orders-canary}
    - match: {prefix: "/v1/orders"}
      route: {cluster: orders}
    - match: {safe_regex: {regex: "/v[0-9]+/health"}}
      direct_response: {status: 200, body: {inline_string: ok}}
    - match:
        prefix: "/"
        query_parameters: [{name: debug, string_match: {exact: "1"}}]
      route: {cluster: debug}
    - match: {path: "/old"}
      redirect: {path_redirect: "/new", response_code: FOUND}
  - name: fallback
    domains: ["*"]
    routes:
    - match:
        prefix: "/"
        headers: {x-user-id: {safe_regex_match: {google_re2: {}, regex: "^admin.*"}}}
      route: {cluster: admin}
    - match: {prefix: "/"}
      route:
        weighted_clusters:
          clusters: [{name: service_v1, weight: 95}, {name: service_v2, weight: 5}]
"#;

fn table() -> (HttpRoutes, Names) {
    let cfg = parse(ROUTES, Format::Yaml).unwrap();
    let mut names = Names::default();
    let t = compile(&virtual_hosts_for(&cfg, None), &mut names).unwrap();
    (t, names)
}

fn req<'a>(
    method: &'a str,
    target: &'a str,
    host: &'a str,
    headers: &'a [httparse::Header<'a>],
) -> RequestView<'a> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    RequestView {
        method: method.as_bytes(),
        path: path.as_bytes(),
        query: query.as_bytes(),
        host: host.as_bytes(),
        headers,
    }
}

fn cluster_of(t: &HttpRoutes, names: &Names, r: RequestView) -> Option<String> {
    let (_, route) = t.route(&r)?;
    match &route.action {
        Action::Forward {
            target: ClusterTarget::One(c),
            ..
        } => names
            .0
            .iter()
            .find(|(_, v)| *v == c)
            .map(|(k, _)| k.clone()),
        Action::Forward { .. } => Some("<weighted>".into()),
        Action::Redirect { status, .. } => Some(format!("redirect {status}")),
        Action::Direct { status, .. } => Some(format!("direct {status}")),
    }
}

#[test]
fn routes_in_order_with_method_header_regex_and_query() {
    let (t, n) = table();
    let canary = [httparse::Header {
        name: "X-Env",
        value: b"canary",
    }];
    let h = "api.example.com";
    assert_eq!(
        cluster_of(&t, &n, req("POST", "/v1/orders", h, &canary)).unwrap(),
        "orders-write"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/v1/orders/7", h, &canary)).unwrap(),
        "orders-canary"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/v1/orders/7", h, &[])).unwrap(),
        "orders"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/v2/health", h, &[])).unwrap(),
        "direct 200"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/v2/health/x", h, &[])),
        None,
        "regex matches the whole path"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/x?a=2&debug=1", h, &[])).unwrap(),
        "debug"
    );
    assert_eq!(cluster_of(&t, &n, req("GET", "/x?debug=10", h, &[])), None);
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/old", h, &[])).unwrap(),
        "redirect 302"
    );
}

#[test]
fn hosts_match_exact_then_suffix_then_any_case_and_port_insensitive() {
    let (t, _) = table();
    assert_eq!(&*t.vhost(b"API.Example.com:8443").unwrap().name, "api");
    assert_eq!(&*t.vhost(b"eu.api.example.com").unwrap().name, "api");
    assert_eq!(&*t.vhost(b"example.com").unwrap().name, "fallback");
    assert_eq!(&*t.vhost(b"[::1]:80").unwrap().name, "fallback");
    assert_eq!(&*t.vhost(&[b'a'; 400]).unwrap().name, "fallback");
}

#[test]
fn seed_style_header_map_and_weighted_split() {
    let (t, n) = table();
    let admin = [httparse::Header {
        name: "x-user-id",
        value: b"admin-7",
    }];
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/", "other", &admin)).unwrap(),
        "admin"
    );
    let (_, r) = t.route(&req("GET", "/", "other", &[])).unwrap();
    let Action::Forward { target, .. } = &r.action else {
        panic!("not forwarded")
    };
    let v2 = n.0["service_v2"];
    let hits = (0..10_000u32)
        .filter(|i| target.pick(i.wrapping_mul(2_654_435_761)) == v2)
        .count();
    assert!(
        (400..=600).contains(&hits),
        "{hits} of 10000 to service_v2, expected ~500"
    );
}

#[test]
fn the_seed_canary_route_config_compiles() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/seed/configs/envoy-route-canary-release.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return eprintln!("skipped: {} not present", path.display());
    };
    let cfg = parse(&text, Format::Yaml).unwrap();
    let mut n = Names::default();
    let t = compile(&virtual_hosts_for(&cfg, None), &mut n).unwrap();
    let canary = [httparse::Header {
        name: "x-env",
        value: b"canary",
    }];
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/any", "h", &canary)).unwrap(),
        "service_v2"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/any", "h", &[])).unwrap(),
        "<weighted>"
    );
}

#[test]
fn bucketing_keeps_configuration_order() {
    // A catch-all before a specific route must still win.
    let yaml = r#"
route_configs:
- name: r
  routes:
  - match: {prefix: "/", headers: [{name: x-first, present_match: true}]}
    route: {cluster: first}
  - match: {prefix: "/api/"}
    route: {cluster: api}
  - match: {prefix: "/"}
    route: {cluster: rest}
"#;
    let cfg = parse(yaml, Format::Yaml).unwrap();
    let mut n = Names::default();
    let t = compile(&virtual_hosts_for(&cfg, None), &mut n).unwrap();
    let first = [httparse::Header {
        name: "x-first",
        value: b"",
    }];
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/api/x", "h", &first)).unwrap(),
        "first"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/api/x", "h", &[])).unwrap(),
        "api"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/apix", "h", &[])).unwrap(),
        "rest"
    );
}

#[test]
fn regex_routes_are_bucketed_by_their_literal_prefix_only_when_safe() {
    let lit = |re: &str| {
        regex_literal_prefix(full_regex(re, false).unwrap().as_str()).map(|b| b.to_vec())
    };
    assert_eq!(lit("/svc1/items/[0-9]+"), Some(b"/svc1/items/".to_vec()));
    assert_eq!(lit("^/api/v[0-9]"), Some(b"/api/v".to_vec()));
    assert_eq!(
        lit("/ab?c"),
        Some(b"/a".to_vec()),
        "an optional char is not part of the prefix"
    );
    assert_eq!(lit("/a/x|/b/y"), None, "alternation");
    assert_eq!(lit(".*"), None);
    assert_eq!(lit(r"/a\.b"), Some(b"/a".to_vec()));
}

#[test]
fn a_bucketed_regex_route_still_matches_in_order() {
    let yaml = r#"
route_configs:
- name: r
  routes:
  - match: {safe_regex: {regex: "/svc1/items/[0-9]+"}}
    route: {cluster: items}
  - match: {prefix: "/"}
    route: {cluster: rest}
"#;
    let cfg = parse(yaml, Format::Yaml).unwrap();
    let mut n = Names::default();
    let t = compile(&virtual_hosts_for(&cfg, None), &mut n).unwrap();
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/svc1/items/42", "h", &[])).unwrap(),
        "items"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/svc1/items/x", "h", &[])).unwrap(),
        "rest"
    );
    assert_eq!(
        cluster_of(&t, &n, req("GET", "/svc2/items/42", "h", &[])).unwrap(),
        "rest"
    );
}

fn rewrite(pattern: &str, substitution: &str, path: &str) -> Result<String, String> {
    let rw = super::RegexRewrite::compile(&crate::config::http::RegexRewrite {
        pattern: crate::config::http::RegexMatcher {
            google_re2: None,
            regex: pattern.into(),
        },
        substitution: substitution.into(),
    })?;
    let mut locs = rw.re.capture_locations();
    let mut out = Vec::new();
    rw.apply(path.as_bytes(), &mut locs, &mut out);
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn regex_rewrite_as_envoy_documents_it() {
    // The examples of Envoy's RouteAction.regex_rewrite.
    assert_eq!(
        rewrite(
            r"^/service/([^/]+)(/.*)$",
            r"\2/instance/\1",
            "/service/foo/v1/api"
        )
        .unwrap(),
        "/v1/api/instance/foo"
    );
    assert_eq!(
        rewrite("one", "two", "/xxx/one/yyy/one/zzz").unwrap(),
        "/xxx/two/yyy/two/zzz"
    );
    assert_eq!(
        rewrite(r"^(.*?)one(.*)$", r"\1two\2", "/xxx/one/yyy/one/zzz").unwrap(),
        "/xxx/two/yyy/one/zzz"
    );
    assert_eq!(
        rewrite("(?i)/xxx/", "/yyy/", "/aaa/XxX/bbb").unwrap(),
        "/aaa/yyy/bbb"
    );
    // Empty matches advance; a literal backslash; no match leaves the path.
    assert_eq!(rewrite("x*", "-", "ab").unwrap(), "-a-b-");
    assert_eq!(rewrite("/", r"\\", "/a/b").unwrap(), r"\a\b");
    assert_eq!(rewrite("nomatch", "z", "/a").unwrap(), "/a");
    // Malformed: a group the pattern does not have, a bad pattern.
    let e = rewrite("(a)", r"\2", "/a").unwrap_err();
    assert!(e.contains(r"\2") && e.contains("1 group"), "{e}");
    assert!(rewrite("(", "x", "/").is_err());
}

/// The indexed lookup (segment buckets, candidate prefilters, split regexes) picks the
/// same route as a plain first-match scan over every route, for routes whose order
/// interleaves buckets and catch-alls, regexes with and without a literal prefix,
/// case-insensitive routes, and method, header and query matchers.
#[test]
fn indexed_lookup_agrees_with_a_linear_scan() {
    let yaml = r#"
route_configs:
- name: r
  routes:
  - match: {prefix: "/api/v1/", headers: [{name: x-env, string_match: {exact: canary}}]}
    route: {cluster: a}
  - match: {safe_regex: {regex: "[a-z/]+/x"}}
    route: {cluster: b}
  - match: {path: "/API/v1/users", case_sensitive: false}
    route: {cluster: c}
  - match: {prefix: "/api/v1/users", method: POST}
    route: {cluster: d}
  - match: {safe_regex: {regex: "/api/v[0-9]+/items/[0-9]+"}}
    route: {cluster: e}
  - match: {safe_regex: {regex: "/api/v1/\\bitems"}}
    route: {cluster: f}
  - match: {prefix: "/", query_parameters: [{name: debug, string_match: {exact: "1"}}]}
    route: {cluster: g}
  - match: {safe_regex: {regex: "/caf\u00e9+/[0-9]"}}
    route: {cluster: h}
  - match: {prefix: "/api/v1/users/"}
    route: {cluster: i}
  - match: {path: "/api/v1/users"}
    route: {cluster: j}
  - match: {prefix: "/api"}
    route: {cluster: k}
  - match: {safe_regex: {regex: "/[0-9]{3}"}}
    route: {cluster: l}
  - match: {prefix: "/long/literal/longer/than/eight/bytes/"}
    route: {cluster: m}
"#;
    let cfg = parse(yaml, Format::Yaml).unwrap();
    let mut n = Names::default();
    let t = compile(&virtual_hosts_for(&cfg, None), &mut n).unwrap();
    let vh = &t.vhosts[0];
    let canary = [httparse::Header {
        name: "X-ENV",
        value: b"canary",
    }];
    let paths = [
        "/",
        "/api",
        "/apix",
        "/api/",
        "/api/v1",
        "/api/v1/",
        "/api/v1/users",
        "/API/V1/USERS",
        "/api/v1/users/",
        "/api/v1/users/7",
        "/api/v2/items/12",
        "/api/v2/items/x",
        "/api/v1/items",
        "/abc/x",
        "/api/x",
        "/café/1",
        "/cafééé/2",
        "/caf/1",
        "/123",
        "/12",
        "/long/literal/longer/than/eight/bytes/",
        "/long/literal/longer/than/eight/bytes",
        "/long/literal/longer/than/eight/byteX/z",
        "api/v1/users/",
        "",
    ];
    let mut checked = 0;
    for p in paths {
        for q in ["", "debug=1"] {
            for m in ["GET", "POST"] {
                for h in [&canary[..], &[]] {
                    let r = RequestView {
                        method: m.as_bytes(),
                        path: p.as_bytes(),
                        query: q.as_bytes(),
                        host: b"h",
                        headers: h,
                    };
                    let want = vh.routes.iter().find(|x| x.matches(&r)).map(|x| x.index);
                    let got = vh.route(&r).map(|x| x.index);
                    assert_eq!(got, want, "{m} {p}?{q} canary={}", !h.is_empty());
                    checked += usize::from(want.is_some());
                }
            }
        }
    }
    assert!(checked > 100, "the table routes most requests ({checked})");
}

#[test]
fn regex_split_at_its_literal_prefix_only_when_the_rest_stands_alone() {
    let split = |re: &str| {
        let c = full_regex(re, false).unwrap();
        split_regex(c.as_str()).map(|(l, r)| {
            (
                l.to_vec(),
                r.map(|r| (r.to_string(), rest_is_context_free(r))),
            )
        })
    };
    assert_eq!(
        split("/svc1/items/[0-9]+"),
        Some((b"/svc1/items/".to_vec(), Some(("[0-9]+".into(), true))))
    );
    assert_eq!(
        split("/a/b"),
        Some((b"/a/b".to_vec(), Some((String::new(), true))))
    );
    assert!(!split(r"/a\bx").unwrap().1.unwrap().1, "word boundary");
    assert!(!split("/a/(?i)x").unwrap().1.unwrap().1, "flag group");
    assert_eq!(
        split("/caf\u{e9}+").unwrap().1,
        None,
        "literal ends inside a character"
    );
    assert_eq!(split("(/a)"), None);
}

/// Virtual host choice follows Envoy: exact, then the longest `*.suffix` (the wildcard
/// stands for at least one character), then the longest `prefix.*`, then `*`; case and a
/// port in `Host` do not matter. (Two virtual hosts naming one domain is a config error.)
#[test]
fn virtual_host_choice_order() {
    let mut y = String::from("route_configs:\n- name: m\n  virtual_hosts:\n");
    for (name, domains) in [
        ("exact", r#"["a.example.com"]"#),
        ("short-suffix", r#"["*.com"]"#),
        ("long-suffix", r#"["*.example.com", "*-dash.example.com"]"#),
        ("prefix", r#"["api.*", "api.internal.*"]"#),
        ("long-prefix", r#"["api.internal.east.*"]"#),
        ("any", r#"["*"]"#),
    ] {
        y += &format!(
            "  - name: {name}\n    domains: {domains}\n    routes:\n    - match: {{prefix: /}}\n      direct_response: {{status: 200}}\n"
        );
    }
    let cfg = parse(&y, Format::Yaml).unwrap();
    let t = compile(&virtual_hosts_for(&cfg, None), &mut Names::default()).unwrap();
    let name = |host: &str| t.vhost(host.as_bytes()).map(|v| v.name.to_string());
    for (host, want) in [
        ("a.example.com", "exact"),
        ("A.Example.COM:8443", "exact"),
        ("b.example.com", "long-suffix"),
        ("x.y.example.com", "long-suffix"),
        ("my-dash.example.com", "long-suffix"),
        ("example.com", "short-suffix"),
        (".com", "any"),
        ("api.internal.east.1", "long-prefix"),
        ("api.internal.west", "prefix"),
        ("api.", "any"),
        ("api.example.com", "long-suffix"),
        ("elsewhere.org", "any"),
        ("[::1]:80", "any"),
    ] {
        assert_eq!(name(host).as_deref(), Some(want), "Host: {host}");
    }
}
