//! HTTP route lookup over 1,000 routes with header and regex matchers (issue 4's goal:
//! ≤ 100 ns median): once in one `*` virtual host, once spread over 100 named virtual
//! hosts (exact and `*.suffix` domains, `Host` with a port, the default vhost), so the
//! `Host` match is measured too. Run: `cargo bench --bench http_route_lookup`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tickmesh::config::{parse, Format};
use tickmesh::route::http::{compile, virtual_hosts_for, ClusterIndex, RequestView};

struct Names(u32);
impl ClusterIndex for Names {
    fn index(&mut self, _: &str) -> u32 {
        self.0 += 1;
        self.0
    }
}

/// 1,000 routes over 100 services: per service an exact path, a header-matched canary,
/// a regex route, a method route, and six plain prefixes.
fn config() -> String {
    let mut y = String::from("route_configs:\n- name: big\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n");
    for s in 0..100 {
        y += &format!(
            "    - match: {{path: \"/svc{s}/health\"}}\n      direct_response: {{status: 200}}\n"
        );
        y += &format!("    - match: {{prefix: \"/svc{s}/\", headers: [{{name: x-env, string_match: {{exact: canary}}}}]}}\n      route: {{cluster: c{s}-canary}}\n");
        y += &format!("    - match: {{safe_regex: {{regex: \"/svc{s}/items/[0-9]+\"}}}}\n      route: {{cluster: c{s}-items}}\n");
        y += &format!("    - match: {{prefix: \"/svc{s}/orders\", method: POST}}\n      route: {{cluster: c{s}-write}}\n");
        for p in 0..6 {
            y += &format!(
                "    - match: {{prefix: \"/svc{s}/p{p}/\"}}\n      route: {{cluster: c{s}-p{p}}}\n"
            );
        }
    }
    y
}

/// The same 1,000 routes as 100 virtual hosts of 10 routes: vhost N serves
/// `svcN.example.com` and `*.svcN.internal`; a last `*` vhost catches the rest.
fn named_hosts_config() -> String {
    let mut y = String::from("route_configs:\n- name: big\n  virtual_hosts:\n");
    for s in 0..100 {
        y += &format!("  - name: v{s}\n    domains: [\"svc{s}.example.com\", \"*.svc{s}.internal\"]\n    routes:\n");
        y += "    - match: {path: \"/health\"}\n      direct_response: {status: 200}\n";
        y += &format!("    - match: {{prefix: \"/\", headers: [{{name: x-env, string_match: {{exact: canary}}}}]}}\n      route: {{cluster: c{s}-canary}}\n");
        y += &format!(
            "    - match: {{safe_regex: {{regex: \"/items/[0-9]+\"}}}}\n      route: {{cluster: c{s}-items}}\n"
        );
        y += &format!(
            "    - match: {{prefix: \"/orders\", method: POST}}\n      route: {{cluster: c{s}-write}}\n"
        );
        for p in 0..6 {
            y += &format!(
                "    - match: {{prefix: \"/p{p}/\"}}\n      route: {{cluster: c{s}-p{p}}}\n"
            );
        }
    }
    y += "  - name: fallback\n    domains: [\"*\"]\n    routes:\n    - match: {prefix: \"/\"}\n      route: {cluster: default}\n";
    y
}

fn bench(c: &mut Criterion) {
    let cfg = parse(&config(), Format::Yaml).expect("valid");
    let table = compile(&virtual_hosts_for(&cfg, None), &mut Names(0)).expect("compiles");
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"api.example.com",
        },
        httparse::Header {
            name: "User-Agent",
            value: b"bench",
        },
        httparse::Header {
            name: "Accept",
            value: b"*/*",
        },
    ];
    let cases: &[(&str, &str)] = &[
        ("last service, plain prefix", "/svc99/p5/x"),
        ("middle service, regex", "/svc50/items/12345"),
        ("first service, exact", "/svc0/health"),
        ("no match", "/nothing/here"),
    ];
    for (name, path) in cases {
        let req = RequestView {
            method: b"GET",
            path: path.as_bytes(),
            query: b"",
            host: b"api.example.com",
            headers: &headers,
        };
        c.bench_function(&format!("http_route_lookup/1000 routes/{name}"), |b| {
            b.iter(|| black_box(table.route(black_box(&req)).is_some()))
        });
    }

    let cfg = parse(&named_hosts_config(), Format::Yaml).expect("valid");
    let table = compile(&virtual_hosts_for(&cfg, None), &mut Names(0)).expect("compiles");
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "last vhost exact host, prefix",
            "svc99.example.com",
            "/p5/x",
            true,
        ),
        (
            "exact host with port, regex",
            "svc50.example.com:8080",
            "/items/12345",
            true,
        ),
        (
            "wildcard host, prefix",
            "orders.svc77.internal",
            "/p3/y",
            true,
        ),
        (
            "unknown host, default vhost",
            "elsewhere.example.org",
            "/p1/z",
            true,
        ),
        (
            "known host, no route",
            "svc10.example.com",
            "/nothing",
            false,
        ),
    ];
    for (name, host, path, routed) in cases {
        let req = RequestView {
            method: b"GET",
            path: path.as_bytes(),
            query: b"",
            host: host.as_bytes(),
            headers: &headers,
        };
        assert_eq!(table.route(&req).is_some(), *routed, "{name}");
        c.bench_function(&format!("http_route_lookup/100 vhosts/{name}"), |b| {
            b.iter(|| black_box(table.route(black_box(&req)).is_some()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
