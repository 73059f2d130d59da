//! Route lookup: what a worker does per new connection before it connects — load the
//! published table, pick the cluster of the listener's route, pick an endpoint — per
//! load-balancing policy. Run: `cargo bench --bench route_lookup`.
//!
//! Noise: the machines are shared 2-vCPU VMs; compare medians of several runs, ideally
//! with nothing else running (criterion reports the spread).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tickmesh::cluster::LbState;
use tickmesh::config::{parse, Format};
use tickmesh::net::SocketPool;
use tickmesh::route::{compile, Routes};
use tickmesh::telemetry::StatsRegistry;

fn config(policy: &str, endpoints: usize, weighted: bool) -> String {
    let eps: Vec<String> = (0..endpoints)
        .map(|i| {
            format!(
                "{{address: \"127.0.0.{}:{}\", weight: {}}}",
                1 + i / 60000,
                1024 + i % 60000,
                1 + i % 3
            )
        })
        .collect();
    let route = if weighted {
        "weighted_clusters: [{cluster: a, weight: 95}, {cluster: b, weight: 5}]"
    } else {
        "cluster: a"
    };
    format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", {route}}}\nclusters:\n  - {{name: a, lb_policy: {policy}, endpoints: [{}]}}\n  - {{name: b, lb_policy: {policy}, endpoints: [{}]}}\n",
        eps.join(", "),
        eps.join(", ")
    )
}

fn bench(c: &mut Criterion) {
    let stats = StatsRegistry::new(1);
    let mut pool = SocketPool::new(1);
    let mut g = c.benchmark_group("route_lookup");
    for policy in [
        "round_robin",
        "least_request",
        "random",
        "maglev",
        "ring_hash",
    ] {
        for (endpoints, weighted) in [(3, false), (100, true)] {
            let cfg = parse(&config(policy, endpoints, weighted), Format::Yaml).unwrap();
            let routes = Arc::new(Routes::new(compile(&cfg, 1, &stats, &mut pool).unwrap()));
            let mut lb = LbState::new(7);
            let mut cursor = 0u32;
            let src = Some("10.1.2.3:40000".parse().unwrap());
            let name = format!(
                "{policy}/{endpoints}ep{}",
                if weighted { "/weighted" } else { "" }
            );
            g.bench_function(name, |b| {
                b.iter(|| {
                    let t = routes.load();
                    let l = &t.listeners[0];
                    // Always Some for a TCP listener with a route.
                    let ci = l.target.as_ref().map_or(0, |t| t.pick(lb.next_u32()));
                    let cl = &t.clusters[ci];
                    black_box(cl.pick(&mut lb, &mut cursor, black_box(src), 0, 0))
                })
            });
        }
        // One endpoint of three ejected (outlier detection): the pick draws again when
        // the balancer lands on it.
        let cfg = parse(&config(policy, 3, false), Format::Yaml).unwrap();
        // Its own registry: health is kept by name, and the other cases must not see it.
        let own = StatsRegistry::new(1);
        let t = compile(&cfg, 1, &own, &mut pool).unwrap();
        let c = &t.clusters[0];
        c.endpoints[1].health.eject(&c.health, 1, 60_000, 60_000);
        c.refresh_plan(); // as the control plane's health tick does
        let routes = Arc::new(Routes::new(t));
        let mut lb = LbState::new(7);
        let mut cursor = 0u32;
        let src = Some("10.1.2.3:40000".parse().unwrap());
        g.bench_function(format!("{policy}/3ep/1-ejected"), |b| {
            b.iter(|| {
                let t = routes.load();
                let cl = &t.clusters[0];
                black_box(cl.pick(&mut lb, &mut cursor, black_box(src), 0, 0))
            })
        });
    }
    // Locality-weighted (2 localities) and two priority levels with one endpoint of the
    // first ejected: the degraded path reads the published load plan.
    for (name, yaml) in [
        (
            "round_robin/4ep/localities",
            "clusters:\n  - name: c\n    locality_weights: {a: 1, b: 2}\n    endpoints: [{address: \"127.0.0.1:1\", locality: a}, {address: \"127.0.0.1:2\", locality: a}, {address: \"127.0.0.1:3\", locality: b}, {address: \"127.0.0.1:4\", locality: b}]\n",
        ),
        (
            "round_robin/4ep/2-levels",
            "clusters:\n  - name: c\n    endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", {address: \"127.0.0.1:3\", priority: 1}, {address: \"127.0.0.1:4\", priority: 1}]\n",
        ),
    ] {
        let cfg = parse(yaml, Format::Yaml).unwrap();
        for ejected in [false, true] {
            let own = StatsRegistry::new(1);
            let t = compile(&cfg, 1, &own, &mut pool).unwrap();
            if ejected {
                let c = &t.clusters[0];
                c.endpoints[0].health.eject(&c.health, 1, 60_000, 60_000);
                c.refresh_plan();
            }
            let routes = Arc::new(Routes::new(t));
            let mut lb = LbState::new(7);
            let mut cursor = 0u32;
            let label = format!("{name}{}", if ejected { "/1-ejected" } else { "" });
            g.bench_function(label, |b| {
                b.iter(|| {
                    let t = routes.load();
                    black_box(t.clusters[0].pick(&mut lb, &mut cursor, None, 0, 0))
                })
            });
        }
    }
    // Slow start (one endpoint of three ramping: the picks thin by published scales) and
    // bounded-load consistent hashing (the set's active connections summed per pick).
    for (name, yaml) in [
        (
            "round_robin/3ep/slow-start",
            "clusters:\n  - {name: c, round_robin_lb_config: {slow_start_config: {slow_start_window: 600s}}, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]}\n",
        ),
        (
            "least_request/3ep/slow-start",
            "clusters:\n  - {name: c, lb_policy: least_request, least_request_lb_config: {slow_start_config: {slow_start_window: 600s}}, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]}\n",
        ),
        (
            "maglev/3ep/bounded-150",
            "clusters:\n  - {name: c, lb_policy: maglev, consistent_hashing_lb_config: {hash_balance_factor: 150}, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]}\n",
        ),
        (
            "ring_hash/3ep/bounded-150",
            "clusters:\n  - {name: c, lb_policy: ring_hash, consistent_hashing_lb_config: {hash_balance_factor: 150}, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]}\n",
        ),
    ] {
        let cfg = parse(yaml, Format::Yaml).unwrap();
        let own = StatsRegistry::new(1);
        let t = compile(&cfg, 1, &own, &mut pool).unwrap();
        let c = &t.clusters[0];
        if c.slow_start.is_some() {
            // Two endpoints long past their window, the third 30 s into it.
            let now = tickmesh::cluster::health::now_ms() + 3_600_000;
            c.endpoints[0].health.restart_slow_start(1);
            c.endpoints[1].health.restart_slow_start(1);
            c.endpoints[2].health.restart_slow_start(now - 30_000);
            c.refresh_slow_start(now);
        }
        let routes = Arc::new(Routes::new(t));
        let mut lb = LbState::new(7);
        let mut cursor = 0u32;
        let src = Some("10.1.2.3:40000".parse().unwrap());
        g.bench_function(name, |b| {
            b.iter(|| {
                let t = routes.load();
                black_box(t.clusters[0].pick(&mut lb, &mut cursor, black_box(src), 0, 0))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
