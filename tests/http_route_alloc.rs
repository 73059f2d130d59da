//! HTTP route lookup never allocates (issue 4): a counting global allocator around
//! lookups over a table with prefix, exact, regex, header and query routes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tickmesh::config::{parse, Format};
use tickmesh::route::http::{compile, virtual_hosts_for, ClusterIndex, RequestView};

/// The one `unsafe` outside `ffi/`, the engines and `offload/`: a global allocator can
/// only be written as an `unsafe impl`, and counting allocations is the way to show the
/// lookup allocates nothing. Test-only; it forwards every call to `System` unchanged.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the thread-local is
// const-initialised and has no destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Names(u32);
impl ClusterIndex for Names {
    fn index(&mut self, _: &str) -> u32 {
        self.0 += 1;
        self.0
    }
}

#[test]
fn route_lookup_does_not_allocate() {
    let yaml = r#"
route_configs:
- name: r
  virtual_hosts:
  - name: api
    domains: ["api.example.com", "*.example.org"]
    routes:
    - match: {prefix: "/svc/", headers: [{name: x-env, string_match: {safe_regex: {regex: "can.*"}}}]}
      route: {cluster: a}
    - match: {safe_regex: {regex: "/svc/items/[0-9]+"}}
      route: {cluster: b}
    - match: {safe_regex: {regex: ".*/x"}}
      route: {cluster: c}
    - match: {prefix: "/", query_parameters: [{name: debug, string_match: {exact: "1"}}]}
      route: {cluster: d}
    - match: {path: "/svc/health"}
      route: {cluster: e}
"#;
    let cfg = parse(yaml, Format::Yaml).expect("valid config");
    let t = compile(&virtual_hosts_for(&cfg, None), &mut Names(0)).expect("compiles");
    let headers = [httparse::Header {
        name: "X-Env",
        value: b"canary",
    }];
    let paths: [&[u8]; 5] = [
        b"/svc/items/12",
        b"/svc/health",
        b"/a/b/x",
        b"/nothing",
        b"/svc/p",
    ];
    // Warm up whatever lazily allocates once per thread (the regex caches).
    let mut hits = 0;
    for round in 0..2 {
        let before = ALLOCS.with(|a| a.get());
        for p in paths {
            for host in [&b"API.example.com:80"[..], b"x.example.org", b"other"] {
                for h in [&headers[..], &[]] {
                    let r = RequestView {
                        method: b"GET",
                        path: p,
                        query: b"a=b&debug=1",
                        host,
                        headers: h,
                    };
                    hits += usize::from(t.route(&r).is_some());
                }
            }
        }
        if round == 1 {
            assert_eq!(ALLOCS.with(|a| a.get()), before, "lookups allocated");
        }
    }
    assert!(hits > 20, "most lookups route ({hits})");
}

/// Endpoint picks allocate nothing either: all usable, and degraded (priority load,
/// locality weights, panic mode) — the plan is read, never built, on a pick.
#[test]
fn endpoint_picks_do_not_allocate() {
    use tickmesh::cluster::LbState;
    let yaml = r#"
clusters:
  - name: prio
    endpoints:
      - "127.0.0.1:1"
      - "127.0.0.1:2"
      - {address: "127.0.0.1:3", priority: 1}
  - name: loc
    lb_policy: least_request
    locality_weights: {a: 1, b: 2}
    endpoints:
      - {address: "127.0.0.1:1", locality: a}
      - {address: "127.0.0.1:2", locality: b}
      - {address: "127.0.0.1:3", locality: b}
  - name: hash
    lb_policy: maglev
    maglev_lb_config: {table_size: 131071}
    hash_policy: {header: x-user}
    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
  - name: ring
    lb_policy: ring_hash
    ring_hash_lb_config: {minimum_ring_size: 4096, hash_function: MURMUR_HASH_2}
    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
  - name: lr-weighted
    lb_policy: least_request
    least_request_lb_config: {choice_count: 3, active_request_bias: {default_value: 0.5}}
    endpoints: [{address: "127.0.0.1:1", weight: 1}, {address: "127.0.0.1:2", weight: 3}, "127.0.0.1:3"]
  - name: lr-equal
    lb_policy: least_request
    least_request_lb_config: {choice_count: 4}
    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
  - name: rr-slow
    round_robin_lb_config: {slow_start_config: {slow_start_window: 60s}}
    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
  - name: lr-slow
    lb_policy: least_request
    least_request_lb_config: {slow_start_config: {slow_start_window: 60s, aggression: {default_value: 2}}}
    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
  - name: bounded
    lb_policy: maglev
    consistent_hashing_lb_config: {hash_balance_factor: 125, use_hostname_for_hashing: true}
    endpoints: [{address: "127.0.0.1:1", hostname: a}, {address: "127.0.0.1:2", hostname: b}]
"#;
    let cfg = parse(yaml, Format::Yaml).expect("valid config");
    let stats = tickmesh::telemetry::StatsRegistry::new(1);
    let t = tickmesh::route::compile(&cfg, 1, &stats, &mut tickmesh::net::SocketPool::new(1))
        .expect("compiles");
    // One endpoint of each slow-start cluster joined just now, the others long ago:
    // its picks take the slow path (the scales published, as the health tick does).
    let now = tickmesh::cluster::health::now_ms() + 120_000;
    for c in t.clusters.iter().filter(|c| c.slow_start.is_some()) {
        c.endpoints[0].health.restart_slow_start(1);
        c.endpoints[1].health.restart_slow_start(1);
        c.endpoints[2].health.restart_slow_start(now);
        c.refresh_slow_start(now + 500);
        assert_eq!(c.health.slow_starting(), 1, "{}", c.name);
    }
    let mut st = LbState::new(1);
    let keyless = RequestView {
        method: b"GET",
        path: b"/",
        query: b"",
        host: b"svc",
        headers: &[],
    };
    let mut picks = |rounds: u32| {
        let mut cur = 0;
        let before = ALLOCS.with(|a| a.get());
        for i in 0..rounds {
            for c in t.clusters.iter() {
                // A request without the hash header: a random key (every other round),
                // else a fixed one; a key-less pick with no source draws at random too.
                let (key, _) = c.hash_key(None, &keyless, None);
                st.set_key(if i % 2 == 0 { key } else { Some(u64::from(i)) });
                std::hint::black_box(c.pick(&mut st, &mut cur, None, i % 2, 0));
                std::hint::black_box(c.pick(&mut st, &mut cur, None, 0, 0));
            }
        }
        ALLOCS.with(|a| a.get()) - before
    };
    picks(2); // warm-up: the arc-swap reader slot of this thread
    assert_eq!(picks(300), 0, "all usable");
    for c in t.clusters.iter() {
        c.endpoints[0].health.eject(&c.health, 1, 1000, 1000);
        c.refresh_plan();
    }
    picks(2);
    assert_eq!(picks(300), 0, "one endpoint out");
    for c in t.clusters.iter() {
        c.endpoints[1].health.eject(&c.health, 1, 1000, 1000);
        c.refresh_plan();
    }
    picks(2);
    assert_eq!(picks(300), 0, "panic and failover");
}
