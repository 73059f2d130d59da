use super::*;
use crate::telemetry::{ListenerCounter, UpstreamCounter};

/// A config with one listener on a kernel-chosen port routed to cluster `a`.
const BASE: &str = r#"
listeners:
  - name: l
    address: 127.0.0.1:0
    cluster: a
clusters:
  - name: a
    endpoints: ["127.0.0.1:1"]
  - name: b
    lb_policy: random
    endpoints: ["127.0.0.1:2", {address: "127.0.0.1:3", weight: 4}]
"#;

/// A port nothing listens on right now (the kernel's choice; it may be taken again
/// before use, which only makes a test fail loudly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn plane(store: Option<StateDir>) -> ControlPlane {
    let cfg = config::parse(BASE, Format::Yaml).unwrap();
    ControlPlane::new(2, cfg, 1, store, true).unwrap()
}

fn port_of(p: &ControlPlane, listener: &str) -> u16 {
    p.routes()
        .load()
        .listener(listener)
        .unwrap()
        .1
        .sockets
        .address
        .port()
}

#[test]
fn apply_upserts_swaps_and_persists_a_new_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let store = StateDir::open(tmp.path()).unwrap();
    let p = plane(Some(store.clone()));
    assert_eq!(store.load().unwrap().unwrap().generation, 1);
    let port = port_of(&p, "l");
    let patch = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:{port}\", weighted_clusters: [{{cluster: a, weight: 1}}, {{cluster: b, weight: 3}}]}}\nclusters:\n  - {{name: c, endpoints: [\"127.0.0.1:4\"]}}\n"
    );
    let r = p.apply(&patch, Format::Yaml, false).unwrap();
    assert_eq!(r.generation, 2);
    let shown: Vec<String> = r.changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(shown, ["listener/l configured", "cluster/c created"]);
    let t = p.routes().load_full();
    assert_eq!(t.generation, 2);
    assert_eq!(t.clusters.len(), 3, "clusters the patch does not name stay");
    assert_eq!(port_of(&p, "l"), port, "same address keeps its sockets");
    let saved = store.load().unwrap().unwrap();
    assert_eq!(saved.generation, 2);
    assert_eq!(saved.config, p.config());

    // Applying the same again is a no-op: same generation, nothing swapped.
    let r = p.apply(&patch, Format::Yaml, false).unwrap();
    assert_eq!(r.generation, 2);
    assert!(r.changes.iter().all(|c| c.action == Action::Unchanged));
    assert!(Arc::ptr_eq(&t, &p.routes().load_full()));
}

#[test]
fn prune_makes_the_file_the_whole_config() {
    let p = plane(None);
    let r = p
        .apply(
            "clusters:\n  - {name: only, endpoints: [\"127.0.0.1:9\"]}\n",
            Format::Yaml,
            true,
        )
        .unwrap();
    let shown: Vec<String> = r.changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        shown,
        [
            "cluster/only created",
            "listener/l pruned",
            "cluster/a pruned",
            "cluster/b pruned"
        ]
    );
    assert!(p.routes().load().listeners.is_empty());
}

#[test]
fn a_route_to_a_missing_cluster_is_rejected_with_path_and_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = StateDir::open(tmp.path()).unwrap();
    let p = plane(Some(store.clone()));
    let before = p.routes().load_full();
    let text = format!(
        "# new listener\nlisteners:\n  - name: m\n    address: 127.0.0.1:{}\n    cluster: nope\n",
        free_port()
    );
    let e = p.apply(&text, Format::Yaml, false).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].path, "listeners[0].cluster");
    assert_eq!(e.problems[0].line, Some(5));
    assert!(
        e.problems[0].message.contains("`nope` is not defined"),
        "{e}"
    );
    assert!(e.message.contains("nothing was changed"), "{e}");
    assert!(Arc::ptr_eq(&before, &p.routes().load_full()));
    assert_eq!(p.generation(), 1);
    assert_eq!(store.load().unwrap().unwrap().generation, 1);
}

#[test]
fn syntax_errors_and_duplicates_in_the_patch_are_located() {
    let p = plane(None);
    let e = p
        .apply(
            "clusters:\n  - name: a\n    endpoints: [\n",
            Format::Yaml,
            false,
        )
        .unwrap_err();
    assert!(e.message.contains("does not parse"), "{e}");
    assert!(e.problems[0].line.is_some(), "{e}");

    let e = p
        .apply(
            "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nbogus = 1\n",
            Format::Toml,
            false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");

    let text = "clusters:\n  - {name: z, endpoints: [\"127.0.0.1:1\"]}\n  - {name: z, endpoints: [\"127.0.0.1:2\"]}\n";
    let e = p.apply(text, Format::Yaml, false).unwrap_err();
    assert_eq!(e.problems[0].path, "clusters[1].name");
    assert_eq!(e.problems[0].line, Some(3));
    assert_eq!(p.generation(), 1);
}

#[test]
fn problems_in_running_resources_name_them() {
    let p = plane(None);
    let m_port = free_port();
    p.apply(
        &format!("listeners:\n  - {{name: m, address: \"127.0.0.1:{m_port}\", protocol: udp, cluster: a}}\n"),
        Format::Yaml,
        false,
    )
    .unwrap();
    // Moving `l` onto the address `m` (later in the running config) already uses.
    let e = p
        .apply(
            &format!("listeners:\n  - {{name: l, address: \"127.0.0.1:{m_port}\", protocol: udp, cluster: a}}\n"),
            Format::Yaml,
            false,
        )
        .unwrap_err();
    assert!(
        e.problems[0]
            .message
            .starts_with("running listener `m` (not in this file)"),
        "{e}"
    );
    assert_eq!(p.generation(), 2);
}

#[test]
fn a_bind_failure_rejects_the_apply_and_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let p = plane(None);
    let text = format!(
        "clusters:\n  - {{name: x, endpoints: [\"127.0.0.1:5\"]}}\nlisteners:\n  - name: busy\n    address: 127.0.0.1:{port}\n    cluster: x\n"
    );
    let e = p.apply(&text, Format::Yaml, false).unwrap_err();
    assert_eq!(e.problems[0].path, "listeners[0].address");
    assert_eq!(e.problems[0].line, Some(5));
    assert!(e.problems[0].message.contains("cannot bind"), "{e}");
    assert_eq!(p.generation(), 1);
    assert!(p.routes().load().cluster("x").is_none());
}

#[test]
fn a_persist_failure_rejects_the_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let p = plane(Some(StateDir::open(&dir).unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let e = p
        .apply(
            "clusters:\n  - {name: x, endpoints: [\"127.0.0.1:5\"]}\n",
            Format::Yaml,
            false,
        )
        .unwrap_err();
    assert!(e.message.contains("cannot persist"), "{e}");
    assert_eq!(p.generation(), 1);
    assert!(p.routes().load().cluster("x").is_none());
}

#[test]
fn delete_refuses_a_cluster_in_use_and_names_the_referrer() {
    let p = plane(None);
    p.apply(
        &format!("listeners:\n  - {{name: w, address: \"127.0.0.1:{}\", weighted_clusters: [{{cluster: a, weight: 9}}, {{cluster: b, weight: 1}}]}}\n", free_port()),
        Format::Yaml,
        false,
    )
    .unwrap();
    let e = p.delete(Kind::Cluster, "a").unwrap_err();
    let s = e.to_string();
    assert!(s.contains("cluster `a` is still in use"), "{s}");
    assert!(s.contains("listener `l` routes to cluster `a`"), "{s}");
    assert!(s.contains("listener `w` sends weight 9"), "{s}");
    assert_eq!(
        e.problems[1].path,
        "listeners[1].weighted_clusters[0].cluster"
    );
    assert_eq!(p.generation(), 2);

    let e = p.delete(Kind::Listener, "nope").unwrap_err();
    assert!(e.message.contains("no listener named `nope`"), "{e}");

    let r = p.delete(Kind::Listener, "l").unwrap();
    assert_eq!(r.generation, 3);
    assert_eq!(r.changes[0].to_string(), "listener/l deleted");
    assert!(p.routes().load().listener("l").is_none());
    assert!(p.delete(Kind::Cluster, "c").is_err());
}

#[test]
fn get_shows_config_and_compiled_routes() {
    let p = plane(None);
    let port = port_of(&p, "l");
    let all = p.get(None);
    assert_eq!(all.generation, 1);
    assert_eq!(all.config.as_ref().unwrap().clusters.len(), 2);
    let routes = all.routes.unwrap();
    assert_eq!(routes[0].listener, "l");
    assert_eq!(routes[0].address.port(), port);
    assert_eq!(routes[0].clusters[0].cluster, "a");
    let l = p.get(Some(GetWhat::Listeners));
    assert!(l.routes.is_none());
    assert!(l.config.unwrap().clusters.is_empty());
    let r = p.get(Some(GetWhat::Routes));
    assert!(r.config.is_none());
}

#[test]
fn stats_report_every_resource_per_worker() {
    let p = plane(None);
    let t = p.routes().load_full();
    let l = &t.listeners[0].stats;
    l.add(0, ListenerCounter::CxTotal, 3);
    l.add(1, ListenerCounter::CxTotal, 2);
    l.add(1, ListenerCounter::CxClosed, 4);
    t.clusters[1].endpoints[1]
        .stats
        .add(1, UpstreamCounter::ConnectFail, 7);
    let s = p.stats();
    assert_eq!(s.workers, 2);
    assert_eq!(s.listeners[0].counters["cx_total"], 5);
    assert_eq!(s.listeners[0].active, 1);
    assert_eq!(s.listeners[0].per_worker[1]["cx_closed"], 4);
    assert_eq!(s.clusters[1].endpoints[1].counters["connect_fail"], 7);
    assert_eq!(s.clusters[1].endpoints[1].per_worker[0]["connect_fail"], 0);
    // Counters survive an apply that keeps the resource.
    p.apply(
        "clusters:\n  - {name: c, endpoints: [\"127.0.0.1:4\"]}\n",
        Format::Yaml,
        false,
    )
    .unwrap();
    assert_eq!(p.stats().listeners[0].counters["cx_total"], 5);
}

#[test]
fn istio_and_envoy_resources_apply_and_delete_by_kind() {
    let p = plane(None);
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shop}\nspec:\n  hosts: [shop]\n  http:\n  - route:\n    - destination: {host: a}\n---\nname: r\nroutes:\n- match: {prefix: /}\n  route: {cluster: b}\n";
    let r = p.apply(vs, Format::Yaml, false).unwrap();
    let shown: Vec<String> = r.changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        shown,
        ["route-config/r created", "virtual-service/shop created"]
    );
    assert_eq!(p.get(None).config.unwrap().virtual_services.len(), 1);
    let again = p.apply(vs, Format::Yaml, false).unwrap();
    assert_eq!(again.generation, r.generation, "unchanged: {again:?}");
    let d = p.delete(Kind::VirtualService, "shop").unwrap();
    assert_eq!(d.changes[0].to_string(), "virtual-service/shop deleted");
    assert!(p.get(None).config.unwrap().virtual_services.is_empty());
    let e = p.delete(Kind::DestinationRule, "shop").unwrap_err();
    assert!(
        e.message.contains("no destination-rule named `shop`"),
        "{e}"
    );
}

#[test]
fn strict_dns_names_are_resolved_before_the_compile() {
    let p = plane(None);
    p.apply(
        "clusters:\n  - {name: named, type: strict_dns, dns_refresh_rate: 1h, endpoints: [\"localhost:9\"]}\n",
        Format::Yaml,
        false,
    )
    .unwrap();
    let t = p.routes().load_full();
    let (_, c) = t.cluster("named").unwrap();
    assert!(
        c.endpoints
            .iter()
            .any(|e| e.address == "127.0.0.1:9".parse().unwrap()),
        "{:?}",
        c.endpoints
    );
    // Not due again for an hour: nothing is resolved, nothing swapped.
    assert!(!p.refresh_dns());
    assert!(Arc::ptr_eq(&t, &p.routes().load_full()));
}
