//! `tickmesh bench` end to end: the real binary runs a tiny bench on loopback and the
//! report it writes is checked field by field, including that every request is accounted
//! for (sent = received + errors) and that a target which cannot start is reported
//! without losing the others.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn tickmesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickmesh"))
}

/// Run `tickmesh bench ARGS --out DIR`; returns (success, stdout+stderr, report.json).
fn bench(dir: &Path, args: &[&str]) -> (bool, String, Value) {
    let out = tickmesh()
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(dir)
        .output()
        .expect("run tickmesh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_to_string(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("no report.json ({e}); output:\n{text}"));
    (
        out.status.success(),
        text,
        serde_json::from_str(&json).expect("report.json is JSON"),
    )
}

fn target<'a>(scenario: &'a Value, name: &str) -> &'a Value {
    scenario["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {scenario}"))
}

#[test]
fn tiny_bench_reports_every_request_and_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, r) = bench(
        dir.path(),
        &[
            "--targets",
            "direct,floor,tickmesh-epoll,tickmesh-uring",
            "--scenarios",
            "closed:1,closed:2,open:2@50%",
            "--runs",
            "1",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(r["schema"], "tickmesh-bench/1");
    for k in [
        "cpu_model",
        "nproc",
        "kernel",
        "memory_kib",
        "os",
        "load_average",
    ] {
        assert!(!r["machine"][k].is_null(), "machine.{k}");
    }
    assert_eq!(r["settings"]["workload"], "tcp-echo");
    assert_eq!(r["settings"]["size"], 64);
    assert!(r["peers"]["floor"]["settings"].as_array().unwrap().len() >= 2);
    assert!(r["peers"]["floor"]["command"]
        .as_str()
        .unwrap()
        .contains("--internal-floor"));
    let scenarios = r["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 3);
    // io_uring may be disabled on a host (containers often block it): then that target
    // must fail with a reason, and the test says so instead of passing silently.
    let uring_ok = target(&scenarios[0], "tickmesh-uring")["clean_runs"] == 1;
    if !uring_ok {
        let why = &r["failures"];
        eprintln!("SKIP tickmesh-uring checks: it did not run cleanly here: {why}");
        assert!(why.to_string().contains("tickmesh-uring"), "{why}");
    }
    let names: &[&str] = if uring_ok {
        &["direct", "floor", "tickmesh-epoll", "tickmesh-uring"]
    } else {
        &["direct", "floor", "tickmesh-epoll"]
    };
    for s in scenarios {
        for &name in names {
            let t = target(s, name);
            for run in t["runs"].as_array().unwrap() {
                let sent = run["sent"].as_u64().unwrap();
                let received = run["received"].as_u64().unwrap();
                let errors = run["errors_total"].as_u64().unwrap();
                assert_eq!(sent, received + errors, "{name} {}: {run}", s["scenario"]);
                assert!(received > 0, "{name} {}: {run}", s["scenario"]);
                let e = &run["errors"];
                let by_cause: u64 = ["timeouts", "closed", "bad_responses", "send_failures"]
                    .iter()
                    .map(|k| e[k].as_u64().unwrap())
                    .sum();
                assert_eq!(by_cause, errors);
                let lat = &run["latency"];
                let (p50, p99, max) = (
                    lat["p50_ns"].as_u64().unwrap(),
                    lat["p99_ns"].as_u64().unwrap(),
                    lat["max_ns"].as_u64().unwrap(),
                );
                assert!(0 < p50 && p50 <= p99 && p99 <= max, "{lat}");
                assert_eq!(lat["percentiles"].as_array().unwrap().len(), 9);
                assert!(!lat["distribution"].as_array().unwrap().is_empty());
            }
            if t["clean_runs"].as_u64().unwrap() > 0 {
                let m = &t["median"];
                assert!(m["throughput_rps"].as_f64().unwrap() > 0.0);
                // A ratio exists when its reference ran cleanly too (a run with an
                // error — a request timing out on a loaded machine — is left out).
                let clean = |n: &str| target(s, n)["clean_runs"].as_u64().unwrap() > 0;
                if clean("direct") {
                    assert!(t["ratio_to_direct"]["p50"].as_f64().unwrap() > 0.0);
                    assert!(t["added_latency_ns"].as_array().unwrap().len() == 9);
                }
                if clean("floor") {
                    assert!(t["ratio_to_floor"]["p999"].as_f64().unwrap() > 0.0);
                }
                if clean("tickmesh-uring") || clean("tickmesh-epoll") {
                    assert!(t["ratio_to_tickmesh"]["p50"].as_f64().unwrap() > 0.0);
                }
            }
        }
        // The proxies' CPU and memory are measured; direct has none.
        for &name in &names[1..] {
            let run = &target(s, name)["runs"][0];
            assert!(run["proxy_cpu_s"].as_f64().unwrap() > 0.0, "{name}: {run}");
            assert!(run["rss_kib"].as_u64().unwrap() > 0, "{name}: {run}");
        }
        assert!(target(s, "direct")["runs"][0]["proxy_cpu_s"].is_null());
        // Spinning tickmesh workers report their busy time (a share of a core that did
        // work); the floor keeps no such count.
        for &name in &names[2..] {
            let run = &target(s, name)["runs"][0];
            let busy = run["proxy_busy_cores"]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: no busy cores: {run}"));
            assert!(busy > 0.0 && busy <= 1.05, "{name}: busy {busy}: {run}");
        }
        assert!(target(s, "floor")["runs"][0]["proxy_busy_cores"].is_null());
    }
    // Open loop ran at half of closed:2's rate.
    let closed = target(&scenarios[1], "direct")["runs"][0]["throughput_rps"]
        .as_f64()
        .unwrap();
    let offered = target(&scenarios[2], "direct")["runs"][0]["offered_rps"]
        .as_f64()
        .unwrap();
    assert!(
        (offered - closed / 2.0).abs() < 1.0,
        "{offered} vs {closed}"
    );
    for f in [
        "report.md",
        "latency-closed-1.svg",
        "latency-closed-1.png",
        "latency-open-2-at-50pct.svg",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| floor |") && md.contains("latency-closed-1.svg"));
    // The terminal table names every target; the tickmesh peers carry their config.
    for name in names {
        assert!(text.contains(name), "{name} missing from the table");
    }
    assert!(r["peers"]["tickmesh-epoll"]["config"]
        .as_str()
        .unwrap()
        .contains("listeners:"));
    assert!(r["peers"]["tickmesh-epoll"]["command"]
        .as_str()
        .unwrap()
        .contains("--engine epoll"));
}

#[test]
fn a_target_that_cannot_start_is_reported_and_the_others_still_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, r) = bench(
        dir.path(),
        &[
            "--targets",
            "direct,tickmesh-epoll",
            "--tickmesh-bin",
            "/bin/false",
            "--scenarios",
            "closed:1",
            "--runs",
            "1",
            "--duration",
            "300ms",
            "--warmup",
            "50ms",
        ],
    );
    assert!(ok, "direct was measured, so the bench succeeds: {text}");
    assert!(text.contains("tickmesh-epoll failed to start"), "{text}");
    let f = &r["failures"][0];
    assert_eq!(f["target"], "tickmesh-epoll");
    assert!(f["error"].as_str().unwrap().contains("failed to start"));
    let s = &r["scenarios"][0];
    assert_eq!(target(s, "direct")["clean_runs"], 1);
    let tm = target(s, "tickmesh-epoll");
    assert_eq!(tm["clean_runs"], 0);
    assert!(tm["median"].is_null());
    assert_eq!(tm["runs"][0]["clean"], false);
}

#[test]
fn a_port_in_use_is_named_and_the_others_still_measured() {
    // Hold P+1 (where the floor would listen); the backend gets P.
    let held = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p > 1024 && p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p - 1)).is_ok() {
            break l;
        }
    };
    let base = held.local_addr().unwrap().port() - 1;
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, r) = bench(
        dir.path(),
        &[
            "--targets",
            "direct,floor",
            "--base-port",
            &base.to_string(),
            "--scenarios",
            "closed:1",
            "--runs",
            "1",
            "--duration",
            "300ms",
            "--warmup",
            "50ms",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("is in use"), "{text}");
    assert_eq!(r["failures"][0]["target"], "floor");
    assert_eq!(target(&r["scenarios"][0], "direct")["clean_runs"], 1);
    drop(held);
}

#[test]
fn unknown_targets_and_workloads_list_the_valid_ones() {
    for (flag, value, listed) in [
        ("--targets", "envoy", "tickmesh-uring"),
        ("--workload", "grpc", "tcp-echo"),
        ("--scenarios", "burst:3", "closed:C"),
        ("--cpus", "gpu=1", "roles: gen, backend, proxy"),
    ] {
        let out = tickmesh().args(["bench", flag, value]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(listed), "{flag} {value}: {err}");
    }
}

/// `--workload tls-echo`: every target (direct to the TLS echo backend, the floor
/// relaying TLS bytes, tickmesh terminating on its offload ring, HAProxy and nginx
/// terminating with OpenSSL) answers every request, and the report says how TLS was set up.
/// Busy cores for both spinners, each read its own way: tickmesh's `worker_loops`
/// counters and HAProxy's `Idle_pct` (which needs ≥ 1.25 s of load for a sample); the
/// goal line puts the per-busy-core rates side by side.
#[test]
fn busy_cores_are_read_from_tickmesh_and_haproxy() {
    let have_haproxy = ["/usr/sbin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join("haproxy").is_file());
    if !have_haproxy {
        eprintln!("SKIP busy_cores_are_read_from_tickmesh_and_haproxy: no haproxy (scripts/setup --bench)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, r) = bench(
        dir.path(),
        &[
            "--workload",
            "http1",
            "--targets",
            "tickmesh-epoll,haproxy",
            "--scenarios",
            "closed:4",
            "--runs",
            "1",
            "--duration",
            "1500ms",
            "--warmup",
            "200ms",
        ],
    );
    assert!(ok, "{text}");
    let s = &r["scenarios"][0];
    for name in ["tickmesh-epoll", "haproxy"] {
        let t = target(s, name);
        let run = &t["runs"][0];
        let busy = run["proxy_busy_cores"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: no busy cores ({}): {run}", run["busy_note"]));
        assert!(busy > 0.0 && busy <= 1.05, "{name}: busy {busy}");
        if t["clean_runs"] == 1 {
            assert!(
                t["median"]["per_busy_core_rps"].as_f64().unwrap() > 0.0,
                "{t}"
            );
        }
    }
    let h = r["peers"]["haproxy"]["config"].as_str().unwrap();
    assert!(
        h.contains("stats socket ") && h.contains("busy-polling"),
        "{h}"
    );
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("`busy cores`") && md.contains("Idle_pct"),
        "{md}"
    );
    if target(s, "haproxy")["clean_runs"] == 1 && target(s, "tickmesh-epoll")["clean_runs"] == 1 {
        assert!(text.contains("req/s per busy core"), "{text}");
    }
}

#[test]
fn tls_echo_runs_end_to_end_through_every_target() {
    tls_end_to_end("tls-echo", "TLS echo backend");
}

/// `--workload https1`: the same with HTTP/1.1 inside TLS (direct to the TLS HTTP
/// backend; tickmesh on an http listener terminating TLS, the others in HTTP mode).
#[test]
fn https1_runs_end_to_end_through_every_target() {
    tls_end_to_end("https1", "TLS HTTP backend");
}

/// A TLS `workload` through every installed target; `direct_word` names what direct's
/// settings say the generator talks to.
fn tls_end_to_end(workload: &str, direct_word: &str) {
    let test = format!("{} end to end", workload);
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP {test}: no openssl CLI for certificates");
        return;
    }
    let have = |b: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(b).is_file())
    };
    let mut names = vec!["direct", "floor", "tickmesh-epoll"];
    for peer in ["haproxy", "nginx"] {
        if have(peer) {
            names.push(peer);
        } else {
            eprintln!("SKIP {peer} in {test}: not installed (scripts/setup --bench)");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let targets = names.join(",");
    let (ok, text, r) = bench(
        dir.path(),
        &[
            "--workload",
            workload,
            "--size",
            "100",
            "--targets",
            &targets,
            "--scenarios",
            "closed:2",
            "--runs",
            "1",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(r["settings"]["workload"], workload);
    assert_eq!(r["settings"]["size"], 100);
    assert!(
        r["failures"].as_array().unwrap().is_empty(),
        "{}",
        r["failures"]
    );
    let s = &r["scenarios"][0];
    for &name in &names {
        let t = target(s, name);
        assert_eq!(t["clean_runs"], 1, "{name}: {t}");
        let run = &t["runs"][0];
        let (sent, received) = (
            run["sent"].as_u64().unwrap(),
            run["received"].as_u64().unwrap(),
        );
        assert!(received > 0 && sent == received, "{name}: {run}");
        assert!(
            t["ratio_to_direct"]["p50"].as_f64().unwrap() > 0.0,
            "{name}"
        );
        assert!(text.contains(name), "{name} missing from the table");
    }
    let tm = r["peers"]["tickmesh-epoll"]["config"].as_str().unwrap();
    assert!(
        tm.contains("tls:") && tm.contains("backend: software"),
        "{tm}"
    );
    let direct = r["peers"]["direct"]["settings"].to_string();
    assert!(
        direct.contains("TLS 1.3") && direct.contains(direct_word),
        "{direct}"
    );
    if workload == "https1" {
        assert!(tm.contains("protocol: http"), "{tm}");
    }
    if names.contains(&"haproxy") {
        let h = r["peers"]["haproxy"]["config"].as_str().unwrap();
        assert!(h.contains(" ssl crt "), "{h}");
        assert_eq!(h.contains("mode http"), workload == "https1", "{h}");
    }
}

/// `--workload tls-handshake`: a new connection and full TLS 1.3 handshake per request
/// through direct, tickmesh (terminating) and HAProxy when installed; every handshake
/// accounted, the report's goal line names the handshake rate per core.
#[test]
fn tls_handshake_runs_end_to_end() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP tls_handshake_runs_end_to_end: no openssl CLI for certificates");
        return;
    }
    let mut names = vec!["direct", "tickmesh-epoll"];
    if ["/usr/sbin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join("haproxy").is_file())
    {
        names.push("haproxy");
    } else {
        eprintln!(
            "SKIP haproxy in tls_handshake_runs_end_to_end: not installed (scripts/setup --bench)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let targets = names.join(",");
    let (ok, text, r) = bench(
        dir.path(),
        &[
            "--workload",
            "tls-handshake",
            "--targets",
            &targets,
            "--scenarios",
            "closed:4",
            "--runs",
            "1",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(r["settings"]["workload"], "tls-handshake");
    assert!(
        r["failures"].as_array().unwrap().is_empty(),
        "{}",
        r["failures"]
    );
    let s = &r["scenarios"][0];
    for &name in &names {
        let run = &target(s, name)["runs"][0];
        let (sent, received) = (
            run["sent"].as_u64().unwrap(),
            run["received"].as_u64().unwrap(),
        );
        assert!(received > 10 && sent == received, "{name}: {run}");
    }
    if names.contains(&"haproxy") {
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.contains("handshakes/s per proxy core"), "{md}");
    }
}

/// `--tickmesh-offload`: the TLS records run on the backend asked for, and the report says
/// which; a backend the binary lacks stops the target with a message naming both instead
/// of measuring the software fallback under the wrong name.
#[test]
fn tls_runs_on_the_requested_offload_backend() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!(
            "SKIP tls_runs_on_the_requested_offload_backend: no openssl CLI for certificates"
        );
        return;
    }
    let args = |backend: &'static str| {
        [
            "--workload",
            "tls-echo",
            "--targets",
            "tickmesh-epoll",
            "--scenarios",
            "closed:1",
            "--runs",
            "1",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--tickmesh-offload",
            backend,
        ]
    };
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, r) = bench(dir.path(), &args("software-threaded"));
    assert!(ok, "{text}");
    assert_eq!(r["settings"]["tickmesh_offload"], "software-threaded");
    let settings = r["peers"]["tickmesh-epoll"]["settings"].to_string();
    assert!(
        settings.contains("offload backend in use (tickmesh stats): software-threaded"),
        "{settings}"
    );
    let run = &target(&r["scenarios"][0], "tickmesh-epoll")["runs"][0];
    assert!(run["received"].as_u64().unwrap() > 10, "{run}");

    // Without DPDK in the binary, cryptodev falls back to software: named, not measured.
    if !cfg!(feature = "dpdk") {
        let dir = tempfile::tempdir().unwrap();
        let (ok, text, _) = bench(dir.path(), &args("cryptodev"));
        assert!(!ok, "{text}");
        assert!(
            text.contains("runs its TLS records on `software-inline`, not the requested `offload.backend: cryptodev`"),
            "{text}"
        );
    }
}
