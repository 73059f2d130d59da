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
    assert_eq!(
        merged.clusters[0].endpoints[0].address.ip().unwrap().port(),
        9009
    );
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

// === L7, Istio and Envoy input ===

fn seed_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/configs")
}

#[test]
fn every_seed_config_applies_as_it_stands() {
    let dir = seed_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!(
            "skipped: {} is not present beside the checkout",
            dir.display()
        );
        return;
    };
    let mut n = 0;
    for e in entries {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let c = parse(&text, Format::from_path(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let total = c.clusters.len()
            + c.route_configs.len()
            + c.virtual_services.len()
            + c.destination_rules.len()
            + c.peer_authentications.len();
        assert!(total > 0, "{}: nothing was read", path.display());
        n += 1;
    }
    assert!(n >= 6, "expected the six seed configs, found {n}");
}

#[test]
fn seed_multidoc_yields_all_three_resources() {
    let text = std::fs::read_to_string(seed_dir().join("seed-section-2.1-multidoc.yaml"));
    let Ok(text) = text else {
        return eprintln!("skipped: seed configs not present");
    };
    let c = parse(&text, Format::Yaml).unwrap();
    assert_eq!(c.virtual_services.len(), 1);
    assert_eq!(c.peer_authentications.len(), 1);
    assert_eq!(c.destination_rules.len(), 1);
    let vh = c.virtual_services[0].to_virtual_host();
    let action = vh.routes[0].route.as_ref().unwrap();
    assert_eq!(
        action.cluster.as_deref(),
        Some("payment.prod.svc.cluster.local")
    );
    let mirror = &action.request_mirror_policies[0];
    assert_eq!(mirror.cluster, "payment.staging.svc.cluster.local");
    assert_eq!(
        mirror
            .runtime_fraction
            .as_ref()
            .unwrap()
            .default_value
            .per_million(),
        300_000
    );
    assert_eq!(action.retry_policy.as_ref().unwrap().num_retries, Some(3));
    let cb = &c.destination_rules[0]
        .spec
        .traffic_policy
        .as_ref()
        .unwrap()
        .connection_pool;
    assert_eq!(
        cb.as_ref().unwrap().tcp.as_ref().unwrap().max_connections,
        Some(1000)
    );
}

const ENVOY_V3_CANARY: &str = r#"
name: canary_release
virtual_hosts:
- name: svc
  domains: ["*"]
  routes:
  - match:
      prefix: "/"
      headers:
      - name: x-env
        string_match: {exact: canary}
    route:
      cluster: service_v2
      rate_limits:
      - actions:
        - header_value_match:
            descriptor_key: canary_user
            descriptor_value: admin
            headers:
            - name: x-user-id
              safe_regex_match: {google_re2: {}, regex: "^admin.*"}
  - match: {prefix: "/"}
    route:
      weighted_clusters:
        clusters:
        - {name: service_v1, weight: 95}
        - {name: service_v2, weight: 5}
---
static_resources:
  clusters:
  - name: service_v1
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: RING_HASH
    load_assignment:
      cluster_name: service_v1
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}
          load_balancing_weight: 3
  - name: telemetry
    type: STRICT_DNS
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: telemetry.example, port_value: 15004}}}
    circuit_breakers:
      thresholds:
      - {priority: DEFAULT, max_connections: 10, max_requests: 5}
"#;

#[test]
fn genuine_envoy_v3_forms_are_accepted() {
    let c = parse(ENVOY_V3_CANARY, Format::Yaml).unwrap();
    let vh = &c.route_configs[0].virtual_hosts[0];
    assert_eq!(
        vh.routes[0].matcher.headers[0]
            .value_match()
            .unwrap()
            .exact
            .as_deref(),
        Some("canary")
    );
    assert_eq!(c.clusters.len(), 2);
    assert_eq!(c.clusters[0].lb_policy, LbPolicy::RingHash);
    assert_eq!(
        c.clusters[0].connect_timeout,
        Some(std::time::Duration::from_millis(250))
    );
    assert_eq!(c.clusters[0].endpoints[0].weight, 3);
    assert_eq!(c.clusters[1].discovery, Discovery::StrictDns);
    assert_eq!(
        c.clusters[1]
            .circuit_breakers
            .as_ref()
            .unwrap()
            .max_requests,
        Some(5)
    );
}

/// Envoy's `common_lb_config`: the panic threshold and locality-weighted balancing with
/// each locality's `load_balancing_weight` (a locality without one takes no traffic).
#[test]
fn envoy_common_lb_config_is_taken() {
    let text = r#"
static_resources:
  clusters:
  - name: zoned
    common_lb_config:
      healthy_panic_threshold: {value: 25.5}
      locality_weighted_lb_config: {}
    load_assignment:
      endpoints:
      - locality: {region: eu, zone: a}
        load_balancing_weight: 2
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}
      - locality: {region: eu, zone: b}
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9002}}}
      - locality: {region: eu, zone: a}
        priority: 1
        load_balancing_weight: 2
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9003}}}
"#;
    let c = parse(text, Format::Yaml).unwrap();
    let z = &c.clusters[0];
    assert_eq!(z.healthy_panic_threshold, Some(25.5));
    assert_eq!(
        z.locality_weights.iter().collect::<Vec<_>>(),
        [(&"eu/a".to_string(), &2), (&"eu/b".to_string(), &0)]
    );
    // Without `locality_weighted_lb_config` Envoy ignores locality weights, and so do we.
    let plain = text.replace("      locality_weighted_lb_config: {}\n", "");
    assert!(parse(&plain, Format::Yaml).unwrap().clusters[0]
        .locality_weights
        .is_empty());
}

#[test]
fn malformed_lb_settings_are_named() {
    let envoy = |common: &str, second_weight: u32| {
        format!(
            "static_resources:\n  clusters:\n  - name: z\n    common_lb_config: {common}\n    load_assignment:\n      endpoints:\n      - {{locality: {{region: r}}, load_balancing_weight: 1, lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}\n      - {{locality: {{region: r}}, priority: 1, load_balancing_weight: {second_weight}, lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 2}}}}}}}}]}}\n"
        )
    };
    let native = |extra: &str| {
        format!("clusters:\n  - name: c\n    endpoints: [{{address: \"127.0.0.1:1\", locality: eu/a}}]\n    {extra}\n")
    };
    let cases = [
        (
            envoy("{zone_aware_lb_config: {}}", 1),
            "unknown field `zone_aware_lb_config`",
        ),
        (
            envoy("{locality_weighted_lb_config: {}}", 2),
            "locality `r` has weight 1 in an earlier entry and 2 here",
        ),
        (
            envoy("{healthy_panic_threshold: {value: 101}}", 1),
            "healthy_panic_threshold",
        ),
        (
            envoy("{healthy_panic_threshold: 50}", 1),
            "healthy_panic_threshold",
        ),
        (native("healthy_panic_threshold: -1"), "not a percentage"),
        (
            native("healthy_panic_threshold: half"),
            "healthy_panic_threshold",
        ),
        (
            native("locality_weights: {eu/b: 1}"),
            "no endpoint of cluster `c` has locality `eu/b`",
        ),
        (native("locality_weights: {eu/a: 0}"), "every weight is 0"),
        (native("locality_weights: {eu/a: 70000}"), "over 65535"),
        (native("locality_weights: [eu/a]"), "locality_weights"),
    ];
    for (text, want) in cases {
        let e = err(&text, Format::Yaml).to_string();
        assert!(
            e.contains(want),
            "input {text:?}\n  error: {e}\n  wanted: {want}"
        );
    }
}

#[test]
fn unsupported_l7_fields_are_named() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    fault: {abort: {httpStatus: 500}}\n",
            "unknown field `fault`",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n", "kind `Service` is not supported"),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - {destination: {host: a}, weight: 60}\n    - {destination: {host: b}, weight: 30}\n",
            "sum to 90",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    retries: {attempts: 2, retryOn: \"5xx,teapot\"}\n",
            "retry condition `teapot`",
        ),
        (
            "name: r\nroutes:\n- match: {safe_regex: {regex: \"(unclosed\"}}\n  route: {cluster: c}\n",
            "invalid regex",
        ),
        ("name: r\nroutes:\n- match: {prefix: /}\n", "exactly one of `route`, `redirect`, `direct_response`"),
        (
            "name: r\nroutes:\n- match: {prefix: /, headers: {x: {exact: a, prefix: b}}}\n  route: {cluster: c}\n",
            "set one condition",
        ),
        ("cluster:\n- name: c\n  type: EDS\n", "cluster type `EDS` is not supported"),
        ("clusters:\n- {name: c, endpoints: [\"db.internal:5432\"]}\n", "type: strict_dns"),
        (
            "static_resources:\n  listeners: []\n",
            "unknown field `listeners`",
        ),
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
fn errors_in_a_later_document_carry_its_line() {
    let text = "listeners: []\n---\nclusters:\n  - name: c\n    endpoints: [\"127.0.0.1:1\"]\n    bogus: 1\n";
    let e = err(text, Format::Yaml);
    assert_eq!(e.problems[0].line, Some(6), "{e}");
}

#[test]
fn http_listener_needs_no_cluster_and_checks_its_route_config() {
    let ok = "listeners:\n  - {name: web, address: \"127.0.0.1:8080\", protocol: http}\n";
    parse(ok, Format::Yaml).unwrap();
    let bad = "listeners:\n  - {name: web, address: \"127.0.0.1:8080\", protocol: http, route_config: nope}\n";
    assert!(err(bad, Format::Yaml)
        .to_string()
        .contains("route configuration `nope` is not defined"));
}

#[test]
fn retry_budgets_in_envoy_and_native_shape() {
    let envoy = ENVOY_V3_CANARY.replace(
        "{priority: DEFAULT, max_connections: 10, max_requests: 5}",
        "{priority: DEFAULT, max_retries: 2, retry_budget: {budget_percent: {value: 25.0}, min_retry_concurrency: 4}}",
    );
    let c = parse(&envoy, Format::Yaml).unwrap();
    let b = c.clusters[1].circuit_breakers.as_ref().unwrap();
    assert_eq!(b.max_retries, Some(2));
    let rb = b.retry_budget.as_ref().unwrap();
    assert_eq!(rb.budget_percent.map(|p| p.value), Some(25.0));
    assert_eq!(rb.min_retry_concurrency, Some(4));
    // Out of range, and a bare number where Envoy writes {value: …}.
    let over = envoy.replace("value: 25.0", "value: 150.0");
    let e = err(&over, Format::Yaml).to_string();
    assert!(
        e.contains("retry_budget.budget_percent.value") && e.contains("150"),
        "{e}"
    );
    let bare = envoy.replace("{value: 25.0}", "25");
    assert!(parse(&bare, Format::Yaml).is_err());
}

#[test]
fn cluster_idle_timeout() {
    let ok = parse(
        "clusters: [{name: a, endpoints: [\"127.0.0.1:1\"], idle_timeout: 90s}]",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        ok.clusters[0].idle_timeout,
        Some(std::time::Duration::from_secs(90))
    );
    let e = err(
        "clusters: [{name: a, endpoints: [\"127.0.0.1:1\"], idle_timeout: 0s}]",
        Format::Yaml,
    )
    .to_string();
    assert!(e.contains("clusters[0].idle_timeout"), "{e}");
}

/// The daemon-wide `offload:` block survives parsing (YAML and TOML): it picks the TLS
/// record backend of every worker.
#[test]
fn offload_block_is_kept() {
    let yaml = "offload: {backend: cryptodev}\nlisteners: []\n";
    let cfg = parse(yaml, Format::Yaml).unwrap();
    assert_eq!(
        cfg.offload.map(|o| o.backend),
        Some(tls::OffloadBackend::Cryptodev)
    );
    let toml = "[offload]\nbackend = \"software-threaded\"\n";
    let cfg = parse(toml, Format::Toml).unwrap();
    assert_eq!(
        cfg.offload.map(|o| o.backend),
        Some(tls::OffloadBackend::SoftwareThreaded)
    );
}

/// `offload.cryptodev_driver` takes the two PMD names; anything else is refused with the
/// field named.
#[test]
fn offload_cryptodev_driver() {
    let cfg = parse(
        "offload: {backend: cryptodev, cryptodev_driver: crypto_openssl}\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        cfg.offload.and_then(|o| o.cryptodev_driver),
        Some(tls::CryptodevDriver::Openssl)
    );
    let err = parse(
        "offload: {backend: cryptodev, cryptodev_driver: crypto_qat}\n",
        Format::Yaml,
    )
    .expect_err("unknown driver");
    let msg = err.to_string();
    assert!(
        msg.contains("crypto_qat") && msg.contains("crypto_aesni_gcm"),
        "{msg}"
    );
}

/// An Envoy bootstrap's `node.locality` is the native top-level `node:` (which takes
/// Envoy's message form too); a bad or conflicting one is an error naming it.
#[test]
fn bootstrap_node_locality_is_the_native_node() {
    let boot = |node: &str| {
        format!(
            "node: {node}\nstatic_resources:\n  clusters:\n    - name: c\n      load_assignment: {{endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n"
        )
    };
    let c = parse(
        &boot("{locality: {region: us-west, zone: zone1, sub_zone: sub1}}"),
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(c.node.unwrap().locality, "us-west/zone1/sub1");
    assert_eq!(c.clusters[0].name, "c");
    let c = parse(&boot("{locality: {region: eu}}"), Format::Yaml).unwrap();
    assert_eq!(c.node.unwrap().locality, "eu");
    // The native document takes the message form as well, and both agree.
    let native = parse("node: {locality: {region: eu, zone: a}}\n", Format::Yaml).unwrap();
    assert_eq!(native.node.unwrap().locality, "eu/a");
    let both = parse(
        &format!(
            "node: {{locality: us-west/zone1}}\n---\n{}",
            boot("{locality: {region: us-west, zone: zone1}}")
        ),
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(both.node.unwrap().locality, "us-west/zone1");
    let cases = [
        ("{locality: {zone: z}}", "`zone` is set without `region`"),
        (
            "{locality: {region: r, sub_zone: s}}",
            "`sub_zone` is set without `zone`",
        ),
        ("{locality: {}}", "an empty locality"),
        ("{locality: {region: \"a/b\"}}", "region `a/b` contains `/`"),
        ("{locality: {region: r, zonee: z}}", "zonee"),
        ("{id: sidecar-1, locality: {region: r}}", "id"),
        ("{locality: [r]}", "locality"),
    ];
    for (node, names) in cases {
        let text = parse(&boot(node), Format::Yaml)
            .expect_err(node)
            .to_string();
        assert!(text.contains(names), "`{node}`: {text}");
        assert!(text.contains("Envoy bootstrap"), "`{node}`: {text}");
    }
    let e = parse(
        &format!(
            "node: {{locality: eu}}\n---\n{}",
            boot("{locality: {region: us}}")
        ),
        Format::Yaml,
    )
    .expect_err("two localities")
    .to_string();
    assert!(
        e.contains("node.locality: `us` here, `eu` in an earlier document"),
        "{e}"
    );
}

/// Envoy's upstream `HttpProtocolOptions` (`typed_extension_protocol_options`) set the
/// pool's idle expiry and the requests per connection; the deprecated cluster-level
/// `max_requests_per_connection` too; protobuf fractional seconds read.
#[test]
fn envoy_http_protocol_options_are_taken() {
    let cluster = |extra: &str| {
        format!(
            "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 0.25s\n    load_assignment: {{endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n{extra}"
        )
    };
    let text = cluster(
        r#"    circuit_breakers: {thresholds: [{max_connections: 9}]}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {idle_timeout: 1.5s, max_requests_per_connection: 7}
        explicit_http_config: {http_protocol_options: {}}
"#,
    );
    let c = parse(&text, Format::Yaml).unwrap().clusters.remove(0);
    assert_eq!(
        c.connect_timeout,
        Some(std::time::Duration::from_millis(250))
    );
    assert_eq!(c.idle_timeout, Some(std::time::Duration::from_millis(1500)));
    let b = c.circuit_breakers.unwrap();
    assert_eq!(
        (b.max_connections, b.max_requests_per_connection),
        (Some(9), Some(7))
    );
    let c = parse(
        &cluster("    max_requests_per_connection: 1\n"),
        Format::Yaml,
    )
    .unwrap()
    .clusters
    .remove(0);
    assert_eq!(
        c.circuit_breakers.unwrap().max_requests_per_connection,
        Some(1)
    );
    assert_eq!(c.idle_timeout, None);
    let opts = |o: &str| {
        cluster(&format!(
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {o}\n"
        ))
    };
    let cases = [
        (
            opts("{common_http_protocol_options: {idle_timeout: 0s}}"),
            "common_http_protocol_options.idle_timeout: 0 (no idle expiry) is not supported",
        ),
        (
            opts("{common_http_protocol_options: {idle_timeout: forever}}"),
            "invalid duration `forever`",
        ),
        (
            opts("{common_http_protocol_options: {max_headers_count: 50}}"),
            "max_headers_count",
        ),
        (
            opts("{explicit_http_config: {http2_protocol_options: {}}}"),
            "http2_protocol_options",
        ),
        (
            opts("{explicit_http_config: {http_protocol_options: {accept_http_10: true}}}"),
            "accept_http_10",
        ),
        (
            opts("{\"@type\": type.googleapis.com/envoy.config.core.v3.Http2ProtocolOptions}"),
            "HttpProtocolOptions.@type",
        ),
        (
            opts("{upstream_http_protocol_options: {auto_sni: true}}"),
            "upstream_http_protocol_options",
        ),
        (
            cluster("    typed_extension_protocol_options:\n      envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions: {}\n"),
            "typed_extension_protocol_options.envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions: this extension is not supported",
        ),
        (
            cluster("    max_requests_per_connection: 2\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {common_http_protocol_options: {max_requests_per_connection: 3}}\n"),
            "differs from the cluster's max_requests_per_connection",
        ),
        (cluster("    max_requests_per_connection: many\n"), "max_requests_per_connection"),
    ];
    for (text, names) in cases {
        let e = parse(&text, Format::Yaml).expect_err(names).to_string();
        assert!(e.contains(names), "{names}: {e}");
    }
}

/// An Envoy cluster's `transport_socket` (`UpstreamTlsContext`) is the native `tls:`;
/// what it cannot say is refused by name.
#[test]
fn envoy_upstream_tls_context_is_the_cluster_tls() {
    let cluster = |ts: &str| {
        format!(
            "static_resources:\n  clusters:\n  - name: c\n    load_assignment: {{endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n    transport_socket: {ts}\n"
        )
    };
    let tls = |ctx: &str| {
        cluster(&format!(
            "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {ctx}}}}}"
        ))
    };
    let c = parse(
        &tls("sni: a.internal, common_tls_context: {tls_certificates: [{certificate_chain: {filename: /c.pem}, private_key: {filename: /c.key}}], validation_context: {trusted_ca: {filename: /ca.pem}}}"),
        Format::Yaml,
    )
    .unwrap()
    .clusters
    .remove(0);
    let t = c.tls.unwrap();
    assert_eq!(t.sni, "a.internal");
    assert_eq!(t.ca, std::path::PathBuf::from("/ca.pem"));
    assert_eq!(t.cert.as_deref(), Some(std::path::Path::new("/c.pem")));
    assert_eq!(t.key.as_deref(), Some(std::path::Path::new("/c.key")));
    let plain = parse(
        &cluster("{name: envoy.transport_sockets.raw_buffer}"),
        Format::Yaml,
    )
    .unwrap();
    assert!(plain.clusters[0].tls.is_none());
    let ca = "validation_context: {trusted_ca: {filename: /ca.pem}}";
    let cases = [
        (
            tls(&format!("common_tls_context: {{{ca}}}")),
            "transport_socket.typed_config.sni: give the upstream's name",
        ),
        (
            tls("sni: a"),
            "validation_context.trusted_ca: give the CA bundle",
        ),
        (
            tls(&format!("sni: a, common_tls_context: {{{ca}, alpn_protocols: [h2]}}")),
            "alpn_protocols",
        ),
        (
            tls(&format!("sni: a, common_tls_context: {{{ca}, tls_params: {{}}}}")),
            "tls_params",
        ),
        (
            tls("sni: a, common_tls_context: {validation_context: {trusted_ca: {inline_string: x}}}"),
            "inline_string",
        ),
        (
            tls("sni: a, common_tls_context: {validation_context: {trusted_ca: {filename: /ca.pem}, match_typed_subject_alt_names: []}}"),
            "match_typed_subject_alt_names",
        ),
        (
            tls(&format!("sni: a, common_tls_context: {{{ca}, tls_certificates: [{{certificate_chain: {{filename: /a}}, private_key: {{filename: /b}}}}, {{certificate_chain: {{filename: /c}}, private_key: {{filename: /d}}}}]}}")),
            "one client certificate per cluster",
        ),
        (
            cluster("{name: envoy.transport_sockets.tls, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, sni: a}}"),
            "typed_config.@type",
        ),
        (
            cluster("{name: envoy.transport_sockets.alts}"),
            "transport socket `envoy.transport_sockets.alts` is not supported",
        ),
        (
            cluster("{name: envoy.transport_sockets.tls}"),
            "give the UpstreamTlsContext",
        ),
        (
            cluster("{name: envoy.transport_sockets.raw_buffer, typed_config: {sni: a}}"),
            "raw_buffer takes no typed_config",
        ),
    ];
    for (text, names) in cases {
        let e = parse(&text, Format::Yaml).expect_err(names).to_string();
        assert!(e.contains(names), "{names}: {e}");
    }
}

/// Envoy's per-policy settings, as Envoy v3 writes them, reach the native cluster.
#[test]
fn envoy_lb_policy_configs_are_taken() {
    let ep = "load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}}]}]}";
    let text = format!(
        r#"
static_resources:
  clusters:
  - name: ring
    lb_policy: RING_HASH
    ring_hash_lb_config:
      minimum_ring_size: 4096
      maximum_ring_size: 65536
      hash_function: MURMUR_HASH_2
    {ep}
  - name: mag
    lb_policy: MAGLEV
    maglev_lb_config: {{table_size: 131071}}
    {ep}
  - name: lr
    lb_policy: LEAST_REQUEST
    least_request_lb_config:
      choice_count: 3
      active_request_bias: {{default_value: 0.5, runtime_key: upstream.lr_bias}}
    {ep}
"#
    );
    let c = parse(&text, Format::Yaml).unwrap();
    assert_eq!(
        c.clusters[0].ring_hash_lb_config,
        Some(RingHashLbConfig {
            minimum_ring_size: Some(4096),
            maximum_ring_size: Some(65536),
            hash_function: Some(RingHashFunction::MurmurHash2),
        })
    );
    assert_eq!(
        c.clusters[1].maglev_lb_config,
        Some(MaglevLbConfig {
            table_size: Some(131_071)
        })
    );
    let lr = c.clusters[2].least_request_lb_config.as_ref().unwrap();
    assert_eq!(lr.choice_count, Some(3));
    assert_eq!(lr.active_request_bias.as_ref().unwrap().default_value, 0.5);
    // The native shape is the same, and round-trips through `get -o yaml`.
    let back = serde_yaml::to_string(&c).unwrap();
    assert!(back.contains("hash_function: MURMUR_HASH_2"), "{back}");
    assert_eq!(parse(&back, Format::Yaml).unwrap().clusters, c.clusters);
    let native = parse(
        "clusters:\n  - {name: r, lb_policy: ring_hash, ring_hash_lb_config: {minimum_ring_size: 64, hash_function: xx_hash}, endpoints: [\"127.0.0.1:1\"]}\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        native.clusters[0]
            .ring_hash_lb_config
            .as_ref()
            .and_then(|r| r.hash_function),
        Some(RingHashFunction::XxHash)
    );
}

#[test]
fn malformed_lb_policy_configs_are_named() {
    let envoy = |policy: &str, block: &str| {
        format!("static_resources:\n  clusters:\n  - name: z\n    lb_policy: {policy}\n    {block}\n    load_assignment: {{endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n")
    };
    let native = |policy: &str, block: &str| {
        format!("clusters:\n  - name: c\n    lb_policy: {policy}\n    endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n    {block}\n")
    };
    let cases = [
        (
            envoy("RING_HASH", "ring_hash_lb_config: {minimum_ring_size: 0}"),
            "ring_hash_lb_config.minimum_ring_size: 0 leaves no room",
        ),
        (
            envoy("RING_HASH", "ring_hash_lb_config: {maximum_ring_size: 0}"),
            "ring_hash_lb_config.maximum_ring_size: 0 leaves no room",
        ),
        (
            envoy(
                "RING_HASH",
                "ring_hash_lb_config: {minimum_ring_size: 4096, maximum_ring_size: 1024}",
            ),
            "ring_hash_lb_config.minimum_ring_size: minimum_ring_size 4096 is larger than maximum_ring_size 1024",
        ),
        (
            envoy("RING_HASH", "ring_hash_lb_config: {minimum_ring_size: 9000000}"),
            "minimum_ring_size: 9000000 is over 8388608",
        ),
        (
            envoy("RING_HASH", "ring_hash_lb_config: {hash_function: CITY_HASH}"),
            "hash_function: unknown variant `CITY_HASH`",
        ),
        (
            envoy("RING_HASH", "ring_hash_lb_config: {minimum_ring_size: big}"),
            "ring_hash_lb_config.minimum_ring_size",
        ),
        (
            envoy("RING_HASH", "ring_hash_lb_config: {use_hostname_for_hashing: true}"),
            "unknown field `use_hostname_for_hashing`",
        ),
        (
            envoy("MAGLEV", "maglev_lb_config: {table_size: 65536}"),
            "maglev_lb_config.table_size: 65536 is not a prime",
        ),
        (
            envoy("MAGLEV", "maglev_lb_config: {table_size: 0}"),
            "maglev_lb_config.table_size: 0 is not a prime",
        ),
        (
            envoy("MAGLEV", "maglev_lb_config: {table_size: 5000101}"),
            "maglev_lb_config.table_size: 5000101 is over 5000011",
        ),
        (
            native("maglev", "maglev_lb_config: {table_size: 2}"),
            "2 slots cannot hold 2 endpoints",
        ),
        (
            envoy("LEAST_REQUEST", "least_request_lb_config: {choice_count: 1}"),
            "least_request_lb_config.choice_count: 1: must be at least 2",
        ),
        (
            envoy("LEAST_REQUEST", "least_request_lb_config: {choice_count: 0}"),
            "least_request_lb_config.choice_count: 0: must be at least 2",
        ),
        (
            envoy(
                "LEAST_REQUEST",
                "least_request_lb_config: {active_request_bias: {default_value: -1}}",
            ),
            "active_request_bias.default_value: -1 is not a finite number",
        ),
        (
            envoy(
                "LEAST_REQUEST",
                "least_request_lb_config: {slow_start_config: {aggression: {default_value: 1}}}",
            ),
            "least_request_lb_config.slow_start_config.slow_start_window: is required",
        ),
        (
            envoy(
                "ROUND_ROBIN",
                "round_robin_lb_config: {slow_start_config: {slow_start_window: 10s, aggression: {default_value: 0}}}",
            ),
            "round_robin_lb_config.slow_start_config.aggression.default_value: 0 is not a finite number > 0",
        ),
        (
            envoy(
                "ROUND_ROBIN",
                "round_robin_lb_config: {slow_start_config: {slow_start_window: 10s, min_weight_percent: {value: 150}}}",
            ),
            "slow_start_config.min_weight_percent.value: 150 is not a percentage",
        ),
        (
            envoy(
                "ROUND_ROBIN",
                "round_robin_lb_config: {slow_start_config: {slow_start_window: soon}}",
            ),
            "invalid duration `soon`",
        ),
        (
            envoy("RANDOM", "round_robin_lb_config: {slow_start_config: {slow_start_window: 10s}}"),
            "round_robin_lb_config: applies to lb_policy round_robin only",
        ),
        (
            envoy("RING_HASH", "common_lb_config: {consistent_hashing_lb_config: {hash_balance_factor: 99}}"),
            "consistent_hashing_lb_config.hash_balance_factor: 99 is below 100",
        ),
        (
            envoy("RING_HASH", "common_lb_config: {consistent_hashing_lb_config: {use_hostname_for_hashing: true}}"),
            "use_hostname_for_hashing: endpoint 0 (127.0.0.1:1) has no host name",
        ),
        (
            envoy("ROUND_ROBIN", "common_lb_config: {consistent_hashing_lb_config: {hash_balance_factor: 150}}"),
            "consistent_hashing_lb_config: applies to lb_policy ring_hash or maglev only",
        ),
        (
            envoy("MAGLEV", "common_lb_config: {consistent_hashing_lb_config: {hash_policy: [{header: {header_name: x}}]}}"),
            "unknown field `hash_policy`",
        ),
        (
            native("maglev", "consistent_hashing_lb_config: {hash_balance_factor: many}"),
            "hash_balance_factor",
        ),
        (
            envoy("ROUND_ROBIN", "ring_hash_lb_config: {minimum_ring_size: 64}"),
            "ring_hash_lb_config: applies to lb_policy ring_hash only",
        ),
        (
            native("round_robin", "least_request_lb_config: {choice_count: 3}"),
            "clusters[0].least_request_lb_config: applies to lb_policy least_request only",
        ),
        (
            native("ring_hash", "maglev_lb_config: {table_size: 65537}"),
            "maglev_lb_config: applies to lb_policy maglev only",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text, Format::Yaml).to_string();
        assert!(
            e.contains(want),
            "input {text:?}\n  error: {e}\n  wanted: {want}"
        );
    }
}

/// Envoy's typed-extension balancer choice: each built-in policy and its typed config
/// reach the native fields; the first supported entry wins; it replaces `lb_policy`.
#[test]
fn envoy_load_balancing_policy_is_taken() {
    let ep = "load_assignment: {endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}, hostname: a.example}}]}]}";
    let t = |pkg: &str, msg: &str| {
        format!("type.googleapis.com/envoy.extensions.load_balancing_policies.{pkg}.v3.{msg}")
    };
    let text = format!(
        r#"
static_resources:
  clusters:
  - name: rr
    lb_policy: LEAST_REQUEST
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: custom.wrr
          typed_config: {{"@type": type.googleapis.com/acme.lb.Wrr, knob: 3}}
      - typed_extension_config:
          name: envoy.load_balancing_policies.round_robin
          typed_config:
            "@type": {rr}
            slow_start_config:
              slow_start_window: 30s
              aggression: {{default_value: 2.0, runtime_key: a}}
              min_weight_percent: {{value: 5}}
            locality_lb_config: {{locality_weighted_lb_config: {{}}}}
      - typed_extension_config:
          name: envoy.load_balancing_policies.random
          typed_config: {{"@type": {random}}}
    load_assignment: {{endpoints: [{{load_balancing_weight: 1, lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9001}}}}, hostname: a.example}}}}]}}]}}
  - name: lr
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: lr
          typed_config:
            "@type": {lr}
            choice_count: 4
            active_request_bias: {{default_value: 0.5}}
            selection_method: N_CHOICES
            slow_start_config: {{slow_start_window: 10s}}
    {ep}
  - name: ring
    lb_policy: ROUND_ROBIN
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: ring
          typed_config:
            "@type": {ring}
            hash_function: MURMUR_HASH_2
            minimum_ring_size: 64
            consistent_hashing_lb_config: {{use_hostname_for_hashing: true, hash_balance_factor: 150}}
    {ep}
  - name: mag
    lb_policy: LOAD_BALANCING_POLICY_CONFIG
    load_balancing_policy:
      policies:
      - typed_extension_config: {{name: m, typed_config: {{"@type": {mag}, table_size: 131071}}}}
    {ep}
  - name: byname
    load_balancing_policy:
      policies:
      - typed_extension_config: {{name: envoy.load_balancing_policies.random}}
    {ep}
"#,
        rr = t("round_robin", "RoundRobin"),
        random = t("random", "Random"),
        lr = t("least_request", "LeastRequest"),
        ring = t("ring_hash", "RingHash"),
        mag = t("maglev", "Maglev"),
    );
    let c = parse(&text, Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    let rr = &c.clusters[0];
    assert_eq!(
        rr.lb_policy,
        LbPolicy::RoundRobin,
        "the policy replaces lb_policy"
    );
    let ss = rr
        .round_robin_lb_config
        .as_ref()
        .and_then(|r| r.slow_start_config.as_ref())
        .expect("slow start");
    assert_eq!(
        ss.slow_start_window,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(ss.aggression.as_ref().map(|a| a.default_value), Some(2.0));
    assert_eq!(ss.min_weight_percent.map(|p| p.value), Some(5.0));
    assert_eq!(rr.endpoints[0].hostname.as_deref(), Some("a.example"));
    assert!(!rr.locality_weights.is_empty(), "locality weighting is on");
    let lr = &c.clusters[1];
    assert_eq!(lr.lb_policy, LbPolicy::LeastRequest);
    let l = lr.least_request_lb_config.as_ref().unwrap();
    assert_eq!(l.choice_count, Some(4));
    assert_eq!(l.active_request_bias.as_ref().unwrap().default_value, 0.5);
    assert!(l.slow_start_config.is_some());
    let ring = &c.clusters[2];
    assert_eq!(ring.lb_policy, LbPolicy::RingHash);
    assert_eq!(
        ring.ring_hash_lb_config,
        Some(RingHashLbConfig {
            minimum_ring_size: Some(64),
            maximum_ring_size: None,
            hash_function: Some(RingHashFunction::MurmurHash2),
        })
    );
    assert_eq!(
        ring.consistent_hashing_lb_config,
        Some(ConsistentHashingLbConfig {
            use_hostname_for_hashing: Some(true),
            hash_balance_factor: Some(150),
        })
    );
    assert_eq!(c.clusters[3].lb_policy, LbPolicy::Maglev);
    assert_eq!(
        c.clusters[3]
            .maglev_lb_config
            .as_ref()
            .and_then(|m| m.table_size),
        Some(131_071)
    );
    assert_eq!(c.clusters[4].lb_policy, LbPolicy::Random);
    // The compiled result is the native shape, and reads back the same.
    let back = serde_yaml::to_string(&c).unwrap();
    assert!(back.contains("slow_start_window: 30s"), "{back}");
    assert!(back.contains("hostname: a.example"), "{back}");
    assert_eq!(parse(&back, Format::Yaml).unwrap().clusters, c.clusters);
}

#[test]
fn malformed_load_balancing_policies_are_named() {
    let t = |pkg: &str, msg: &str| {
        format!("type.googleapis.com/envoy.extensions.load_balancing_policies.{pkg}.v3.{msg}")
    };
    let one = |typed: &str| {
        format!("static_resources:\n  clusters:\n  - name: z\n    load_balancing_policy:\n      policies:\n      - typed_extension_config:\n          name: p\n          typed_config: {typed}\n    load_assignment: {{endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n")
    };
    let rr = t("round_robin", "RoundRobin");
    let lr = t("least_request", "LeastRequest");
    let ring = t("ring_hash", "RingHash");
    let mag = t("maglev", "Maglev");
    let cases = [
        (
            "static_resources:\n  clusters:\n  - name: z\n    load_balancing_policy: {policies: []}\n".to_string(),
            "load_balancing_policy.policies: is empty",
        ),
        (
            one("{\"@type\": type.googleapis.com/acme.Wrr}"),
            "load_balancing_policy.policies: no policy of the list is supported (`type.googleapis.com/acme.Wrr`)",
        ),
        (
            "static_resources:\n  clusters:\n  - name: z\n    load_balancing_policy: {policies: [{typed_extension_config: {name: acme.p2c}}]}\n".to_string(),
            "no policy of the list is supported (`acme.p2c`)",
        ),
        (
            "static_resources:\n  clusters:\n  - name: z\n    lb_policy: LOAD_BALANCING_POLICY_CONFIG\n".to_string(),
            "lb_policy `LOAD_BALANCING_POLICY_CONFIG` is not supported",
        ),
        (
            one("{choice_count: 3}"),
            "policies[0].typed_extension_config.typed_config.@type: is missing",
        ),
        (
            one(&format!("{{\"@type\": {lr}, choice_count: three}}")),
            "policies[0].typed_extension_config.typed_config.choice_count: invalid type: string \"three\", expected u32",
        ),
        (
            one(&format!("{{\"@type\": {lr}, choice_count: 1}}")),
            "least_request_lb_config.choice_count: 1: must be at least 2",
        ),
        (
            one(&format!("{{\"@type\": {lr}, selection_method: FULL_SCAN}}")),
            "typed_config.selection_method: `FULL_SCAN` is not supported",
        ),
        (
            one(&format!("{{\"@type\": {rr}, slow_start_config: {{slow_start_window: 5s, aggression: {{default_value: -1}}}}}}")),
            "slow_start_config.aggression.default_value: -1 is not a finite number > 0",
        ),
        (
            one(&format!("{{\"@type\": {rr}, slow_start_config: {{slow_start_window: 5s, min_weight_percent: {{value: 101}}}}}}")),
            "min_weight_percent.value: 101 is not a percentage 0..=100",
        ),
        (
            one(&format!("{{\"@type\": {rr}, locality_lb_config: {{zone_aware_lb_config: {{}}}}}}")),
            "unknown field `zone_aware_lb_config`",
        ),
        (
            one(&format!("{{\"@type\": {rr}, shuffle: true}}")),
            "unknown field `shuffle`",
        ),
        (
            one(&format!("{{\"@type\": {ring}, hash_function: CITY_HASH}}")),
            "typed_config.hash_function: `CITY_HASH` is not a hash function",
        ),
        (
            one(&format!("{{\"@type\": {ring}, consistent_hashing_lb_config: {{hash_balance_factor: 50}}}}")),
            "consistent_hashing_lb_config.hash_balance_factor: 50 is below 100",
        ),
        (
            one(&format!("{{\"@type\": {ring}, hash_balance_factor: 120, consistent_hashing_lb_config: {{hash_balance_factor: 150}}}}")),
            "give them once",
        ),
        (
            one(&format!("{{\"@type\": {mag}, table_size: 65536}}")),
            "maglev_lb_config.table_size: 65536 is not a prime",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text, Format::Yaml).to_string();
        assert!(
            e.contains(want),
            "input {text:?}\n  error: {e}\n  wanted: {want}"
        );
    }
}

/// Slow start and consistent-hashing settings in the native shape (Envoy's names).
#[test]
fn native_slow_start_and_hashing_options() {
    let c = parse(
        r#"
clusters:
  - name: a
    type: strict_dns
    lb_policy: maglev
    consistent_hashing_lb_config: {use_hostname_for_hashing: true, hash_balance_factor: 125}
    endpoints: ["one.example:80", {address: "127.0.0.1:81", hostname: two.example}]
  - name: b
    lb_policy: round_robin
    round_robin_lb_config: {slow_start_config: {slow_start_window: 2s}}
    endpoints: ["127.0.0.1:80"]
"#,
        Format::Yaml,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.clusters[0].endpoints[1].hostname.as_deref(),
        Some("two.example")
    );
    let dup = err(
        "clusters:\n  - {name: a, lb_policy: ring_hash, consistent_hashing_lb_config: {use_hostname_for_hashing: true}, endpoints: [{address: \"127.0.0.1:1\", hostname: x}, {address: \"127.0.0.1:2\", hostname: x}]}\n",
        Format::Yaml,
    )
    .to_string();
    assert!(dup.contains("host name `x` names two endpoints"), "{dup}");
}
