use super::*;

const ISSUE_SHAPE: &str = r#"
listeners:
  - name: orders
    address: 127.0.0.1:7000
    protocol: tcp            # tcp | udp
    cluster: gateway
clusters:
  - name: gateway
    lb_policy: round_robin   # round_robin | least_request | random | maglev
    endpoints: ["127.0.0.1:9000", {address: "127.0.0.1:9001", weight: 2}]
"#;

fn err(text: &str, f: Format) -> ConfigError {
    parse(text, f).expect_err("config should be rejected")
}

#[test]
fn the_documented_shape_parses() {
    let c = parse(ISSUE_SHAPE, Format::Yaml).unwrap();
    assert_eq!(c.listeners[0].cluster.as_deref(), Some("gateway"));
    assert_eq!(c.clusters[0].endpoints[1].weight, 2);
    assert_eq!(c.clusters[0].endpoints[0].weight, 1);
}

#[test]
fn the_default_config_is_valid() {
    let c = parse(DEFAULT_CONFIG, Format::Yaml).unwrap();
    assert!(c.listeners.iter().any(|l| l.protocol == Protocol::Udp));
}

#[test]
fn weighted_clusters_parse() {
    let text = r#"
listeners:
  - name: l
    address: 127.0.0.1:7000
    weighted_clusters: [{cluster: a, weight: 95}, {cluster: b, weight: 5}]
clusters:
  - {name: a, endpoints: ["127.0.0.1:1"]}
  - {name: b, endpoints: ["127.0.0.1:2"], lb_policy: maglev}
"#;
    let c = parse(text, Format::Yaml).unwrap();
    assert_eq!(c.listeners[0].weighted_clusters.len(), 2);
}

#[test]
fn toml_parses_the_same_shape() {
    let text = r#"
[[listeners]]
name = "orders"
address = "127.0.0.1:7000"
cluster = "gateway"
idle_timeout = "30s"

[[clusters]]
name = "gateway"
lb_policy = "least_request"
endpoints = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 2 }]
"#;
    let c = parse(text, Format::Toml).unwrap();
    assert_eq!(
        c.listeners[0].idle_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(c.clusters[0].lb_policy, LbPolicy::LeastRequest);
}

#[test]
fn unknown_field_names_path_and_line() {
    let text = "listeners:\n  - name: orders\n    address: 127.0.0.1:7000\n    cluser: gateway\n";
    let e = err(text, Format::Yaml);
    let s = e.to_string();
    assert!(s.contains("listeners[0]"), "{s}");
    assert!(s.contains("unknown field `cluser`"), "{s}");
    assert_eq!(e.problems[0].line, Some(4), "{s}");
}

#[test]
fn missing_cluster_reference_names_path_and_line() {
    let text = ISSUE_SHAPE.replace("cluster: gateway", "cluster: nowhere");
    let e = err(&text, Format::Yaml);
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].path, "listeners[0].cluster");
    assert_eq!(e.problems[0].line, Some(6));
    assert!(e.to_string().contains("cluster `nowhere` is not defined"));
}

#[test]
fn toml_semantic_errors_are_located() {
    let text = "[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\ncluster = \"x\"\n";
    let e = err(text, Format::Toml);
    assert_eq!(e.problems[0].path, "listeners[0].cluster");
    assert_eq!(e.problems[0].line, Some(4), "{e}");
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = err("[[listeners]]\nname = \n", Format::Toml);
    assert_eq!(e.problems[0].line, Some(2), "{e}");
}

#[test]
fn malformed_inputs_are_rejected_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        ("listeners: [", "did not find expected"),
        ("listeners:\n  - name: a\n    address: nope\n    cluster: c\n", "invalid socket address"),
        ("listeners:\n  - name: a\n    address: 127.0.0.1:1\n    protocol: sctp\n    cluster: c\n", "unknown variant `sctp`"),
        ("clusters:\n  - name: c\n    endpoints: [\"127.0.0.1\"]\n", "invalid endpoint address"),
        ("clusters:\n  - name: c\n    endpoints: [{address: \"127.0.0.1:1\", weigth: 2}]\n", "unknown field `weigth`"),
        ("clusters:\n  - name: c\n    endpoints: [{address: \"127.0.0.1:1\", weight: 0}]\n", "out of range"),
        ("clusters:\n  - name: c\n    endpoints: []\n", "at least one endpoint"),
        ("clusters:\n  - name: c\n    lb_policy: fastest\n    endpoints: [\"127.0.0.1:1\"]\n", "unknown variant `fastest`"),
        ("clusters:\n  - name: c\n    connect_timeout: soon\n    endpoints: [\"127.0.0.1:1\"]\n", "invalid duration"),
        ("clusters:\n  - {name: c, endpoints: [\"127.0.0.1:1\"]}\n  - {name: c, endpoints: [\"127.0.0.1:2\"]}\n", "duplicate cluster name"),
        ("clusters:\n  - {name: \"a b\", endpoints: [\"127.0.0.1:1\"]}\n", "invalid name"),
        ("clusters:\n  - {name: c, endpoints: [\"0.0.0.0:1\"]}\n", "not a connectable address"),
        ("listeners:\n  - {name: a, address: \"127.0.0.1:1\"}\n", "needs `cluster` or `weighted_clusters`"),
        ("routes: []\n", "unknown field `routes`"),
        ("- just\n- a list\n", "invalid type"),
    ];
    for (text, want) in cases {
        let e = err(text, Format::Yaml).to_string();
        assert!(
            e.contains(want),
            "input {text:?}\n  error: {e}\n  wanted: {want}"
        );
    }
}

#[test]
fn listener_address_clash_and_double_target() {
    let text = r#"
listeners:
  - {name: a, address: "127.0.0.1:7000", cluster: c}
  - {name: b, address: "127.0.0.1:7000", cluster: c, weighted_clusters: [{cluster: c, weight: 1}]}
  - {name: u, address: "127.0.0.1:7000", protocol: udp, cluster: c}
clusters:
  - {name: c, endpoints: ["127.0.0.1:1"]}
"#;
    let e = err(text, Format::Yaml);
    let s = e.to_string();
    assert!(s.contains("already used by listener `a`"), "{s}");
    assert!(s.contains("not both"), "{s}");
    assert_eq!(e.problems.len(), 2, "udp on the same port is fine: {s}");
}

#[test]
fn apply_upserts_and_prune_replaces() {
    let base = parse(ISSUE_SHAPE, Format::Yaml).unwrap();
    let patch = parse_only(
        "clusters:\n  - {name: gateway, endpoints: [\"127.0.0.1:9009\"]}\n  - {name: extra, endpoints: [\"127.0.0.1:9010\"]}\n",
        Format::Yaml,
    )
    .unwrap();
    let merged = base.applied(&patch, false);
    assert_eq!(
        merged.listeners, base.listeners,
        "listeners not named in the patch are untouched"
    );
    assert_eq!(merged.clusters.len(), 2);
    assert_eq!(merged.clusters[0].endpoints[0].address.port(), 9009);
    let pruned = base.applied(&patch, true);
    assert!(pruned.listeners.is_empty());
}

#[test]
fn delete_removes_one_resource() {
    let base = parse(ISSUE_SHAPE, Format::Yaml).unwrap();
    let without = base.without(Kind::Listener, "orders").unwrap();
    assert!(without.listeners.is_empty());
    assert!(base.without(Kind::Cluster, "nope").is_none());
    // Deleting a cluster still referenced leaves a config that fails validation.
    let dangling = base.without(Kind::Cluster, "gateway").unwrap();
    assert!(validate(&dangling).is_err());
}

#[test]
fn config_round_trips_through_yaml_and_json() {
    let c = parse(DEFAULT_CONFIG, Format::Yaml).unwrap();
    let y = serde_yaml::to_string(&c).unwrap();
    assert_eq!(parse(&y, Format::Yaml).unwrap(), c);
    let j = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&j).unwrap(), c);
}
