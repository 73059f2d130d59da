//! End to end through `net_tap`: a kernel TCP client in one network namespace reaches an
//! echo backend in another through the DPDK load balancer (DNAT there and back), all in
//! namespaces this test creates. The client and the backend are this test binary started
//! again inside the namespaces (`ip netns exec`), selected by environment variables.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NS: [&str; 3] = ["tmdc", "tmdb", "tmdl"]; // client, backend, balancer
const CLIENT_MAC: &str = "02:00:00:00:99:02";
const BACKEND_MAC: &str = "02:00:00:00:99:03";

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Namespaces;
impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in NS {
            sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// Helper role: the echo backend (one connection) inside the backend namespace.
#[test]
fn role_echo_backend() {
    let Ok(addr) = std::env::var("TM_E2E_ECHO") else {
        return;
    };
    let l = TcpListener::bind(addr.parse::<SocketAddr>().unwrap()).unwrap();
    l.set_nonblocking(true).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap();
                s.write_all(&buf[..n]).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Helper role: the client inside the client namespace.
#[test]
fn role_client() {
    let Ok(addr) = std::env::var("TM_E2E_CLIENT") else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the VIP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello through dpdk").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello through dpdk");
    println!("E2E-ECHO-OK from {}", s.peer_addr().unwrap());
}

fn helper(ns: &str, role: &str, env: (&str, &str)) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", role, "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn kernel_tcp_client_reaches_backend_through_the_dpdk_balancer() {
    if std::env::var("TM_E2E_ECHO").is_ok() || std::env::var("TM_E2E_CLIENT").is_ok() {
        return;
    }
    if !dpdk_common::dpdk_usable() {
        return;
    }
    if !sh(&["ip", "netns", "add", "tmdprobe"]) {
        eprintln!("SKIP: cannot create network namespaces here");
        return;
    }
    sh(&["ip", "netns", "del", "tmdprobe"]);
    for ns in NS {
        sh(&["ip", "netns", "del", ns]);
    }
    let _cleanup = Namespaces;
    for ns in NS {
        must(&["ip", "netns", "add", ns]);
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let [c, b, l] = NS;
    must(&["ip", "-n", l, "link", "add", "br0", "type", "bridge"]);
    must(&["ip", "-n", l, "link", "set", "br0", "up"]);
    for (ns, ours, theirs, mac, addr, gw) in [
        (c, "c0", "c1", CLIENT_MAC, "10.99.1.2/24", "10.99.1.1"),
        (b, "b0", "b1", BACKEND_MAC, "10.99.2.2/24", "10.99.2.1"),
    ] {
        must(&[
            "ip", "-n", l, "link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", ns,
        ]);
        must(&["ip", "-n", l, "link", "set", ours, "master", "br0", "up"]);
        must(&["ip", "-n", ns, "link", "set", theirs, "address", mac, "up"]);
        must(&["ip", "-n", ns, "addr", "add", addr, "dev", theirs]);
        must(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
        // The balancer rewrites checksums incrementally: send it complete ones.
        sh(&[
            "ip", "netns", "exec", ns, "ethtool", "-K", theirs, "tx", "off",
        ]);
    }

    let dir = dpdk_common::tempdir("tap-e2e");
    std::fs::write(
        dir.join("cfg.yaml"),
        "listeners:\n  - {name: echo, address: \"10.99.0.100:80\", cluster: echo}\nclusters:\n  - {name: echo, endpoints: [\"10.99.2.2:8080\"]}\n",
    )
    .unwrap();
    let backend = helper(b, "role_echo_backend", ("TM_E2E_ECHO", "10.99.2.2:8080"));
    let neighbor_c = format!("10.99.1.2={CLIENT_MAC}");
    let neighbor_b = format!("10.99.2.2={BACKEND_MAC}");
    let mut lb = Command::new("ip")
        .args([
            "netns",
            "exec",
            l,
            env!("CARGO_BIN_EXE_tickmesh"),
            "run",
            "--engine",
            "dpdk",
            "-w",
            "1",
            "--idle",
            "park",
            "-c",
        ])
        .arg(dir.join("cfg.yaml"))
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .args([
            "--dpdk-no-huge",
            "--dpdk-file-prefix",
            "tm-test-tap",
            "--dpdk-vdev",
            "net_tap0,iface=dtap0",
        ])
        .args([
            "--dpdk-local-ip",
            "10.99.1.1",
            "--dpdk-local-ip",
            "10.99.2.1",
        ])
        .args([
            "--dpdk-neighbor",
            &neighbor_c,
            "--dpdk-neighbor",
            &neighbor_b,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the engine runs (the port is started and net_tap has finished setting
    // up dtap0), reading its log on a thread so the pipe never fills.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = lb.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("dpdk engine running") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = Command::new("kill")
            .args(["-TERM", &lb.id().to_string()])
            .status();
        let _ = lb.wait();
        panic!("the balancer did not start: {}", log.join().unwrap());
    }
    // net_tap gives the kernel side the DPDK port's MAC; on a bridge that MAC would be
    // the bridge's own (frames to it stop in the balancer's namespace). Give the kernel
    // side its own MAC, like the far end of a cable.
    must(&[
        "ip",
        "-n",
        l,
        "link",
        "set",
        "dtap0",
        "address",
        "02:00:00:00:99:aa",
    ]);
    must(&["ip", "-n", l, "link", "set", "dtap0", "master", "br0", "up"]);

    let client = helper(c, "role_client", ("TM_E2E_CLIENT", "10.99.0.100:80"));
    let cout = client.wait_with_output().unwrap();
    let bout = backend.wait_with_output().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &lb.id().to_string()])
        .status();
    let lout = lb.wait_with_output().unwrap();
    let lerr = log.join().unwrap();
    let client_said = String::from_utf8_lossy(&cout.stdout);
    assert!(
        cout.status.success() && client_said.contains("E2E-ECHO-OK from 10.99.0.100:80"),
        "client: {client_said}\n{}\nbackend: {}\nbalancer: {}\n{}",
        String::from_utf8_lossy(&cout.stderr),
        String::from_utf8_lossy(&bout.stderr),
        String::from_utf8_lossy(&lout.stdout),
        lerr,
    );
    let stats: serde_json::Value = serde_json::from_slice(&lout.stdout).unwrap();
    let vip = &stats["counters"]["vip/echo"]["total"];
    assert!(vip["packets"].as_u64().unwrap() >= 3, "{vip}");
    assert!(vip["reply_packets"].as_u64().unwrap() >= 2, "{vip}");
    assert!(
        stats["counters"]["port/net_tap0"]["total"]["arp_replies"]
            .as_u64()
            .unwrap()
            >= 2
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// === live config changes over the control socket ===

const CTL_NS: [&str; 4] = ["tmxc", "tmxb1", "tmxb2", "tmxl"]; // client, backends, balancer
const CTL_VIP: &str = "10.99.0.100:80";
const B1: &str = "10.99.2.2:8080";
const B2: &str = "10.99.3.2:8080";
const B2_MAC: &str = "02:00:00:00:99:04";

fn echo_cfg(backends: &[&str]) -> String {
    format!(
        "listeners:\n  - {{name: echo, address: \"{CTL_VIP}\", cluster: echo}}\nclusters:\n  - {{name: echo, endpoints: [{}]}}\n",
        backends
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A TCP echo that prefixes every answer with its name; serves connections until
/// `$dir/done` exists (or 40 s pass).
#[test]
fn role_named_echo() {
    let Ok(spec) = std::env::var("TM_E2E_NAMED_ECHO") else {
        return;
    };
    let (addr, rest) = spec.split_once(',').unwrap();
    let (name, dir) = rest.split_once(',').unwrap();
    let l = TcpListener::bind(addr.parse::<SocketAddr>().unwrap()).unwrap();
    l.set_nonblocking(true).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40)
        && !std::path::Path::new(dir).join("done").exists()
    {
        match l.accept() {
            Ok((mut s, _)) => {
                let name = name.to_string();
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        let mut out = format!("{name}:").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Connects to the VIP from a fixed source port, sends `one`, prints the answer; with a
/// `$dir/go` file to wait for, then sends `two` on the same connection and prints that
/// answer too.
#[test]
fn role_port_client() {
    let Ok(spec) = std::env::var("TM_E2E_PORT_CLIENT") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let vip: SocketAddr = parts[0].parse().unwrap();
    let sport: u16 = parts[1].parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([10, 99, 1, 2], sport)).into())
        .unwrap();
    s.connect_timeout(&vip.into(), Duration::from_secs(10))
        .expect("connect to the VIP");
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ask = |what: &str| {
        s.write_all(what.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        let said = String::from_utf8_lossy(&buf[..n]).into_owned();
        println!("ANSWER {said}");
    };
    ask("one");
    if let Some(dir) = parts.get(2) {
        let go = std::path::Path::new(dir).join("go");
        let start = Instant::now();
        while !go.exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        ask("two");
    }
}

/// A source port whose flow Maglev gives to `want` when the cluster is `backends`
/// (computed with the balancer's own table, as the engine will).
fn port_for(backends: &[&str], want: &str, skip: u16) -> u16 {
    use tickmesh::engine::dpdk::lb::{flow_hash_v4, LbAddressing, LbTable};
    let cfg = tickmesh::config::parse(&echo_cfg(backends), tickmesh::config::Format::Yaml).unwrap();
    let stats = tickmesh::telemetry::StatsRegistry::new(1);
    let t = LbTable::compile(&cfg, &LbAddressing::default(), 1, &stats).unwrap();
    let vip = &t.vips[0];
    let std::net::SocketAddr::V4(va) = vip.addr else {
        panic!("the echo config's VIP is IPv4")
    };
    let (src, dst) = (std::net::Ipv4Addr::new(10, 99, 1, 2), *va.ip());
    (skip..60000)
        .find(|&p| {
            let (c, b) = t.pick(vip, flow_hash_v4(src, dst, p, 80, 6));
            t.clusters[c as usize].backends[b as usize].addr.to_string() == want
        })
        .expect("some port maps to each backend")
}

fn tickmesh_ctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tickmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct CtlNamespaces;
impl Drop for CtlNamespaces {
    fn drop(&mut self) {
        for ns in CTL_NS {
            sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// The DPDK engine follows the control socket: an apply adds a backend; a flow
/// established before it stays on its backend although Maglev now gives its 5-tuple to
/// the new one; a new flow goes to the new backend; `tickmesh stats` shows the port,
/// VIP and backend counters; SIGHUP re-applies the edited `--config`.
/// `Cpus_allowed_list` of /proc/`path`/status, as CPU numbers ("0-2,5" → 0, 1, 2, 5).
fn allowed_cpus(path: &std::path::Path) -> Vec<usize> {
    let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    cpus
}

/// The daemon's control threads (control socket, SIGHUP reload, port control) run on
/// CPUs outside the worker lcore's, when the process has any: worker 0 (the main
/// thread) keeps its CPU to itself.
fn control_threads_leave_the_worker_cpu(pid: u32) {
    if allowed_cpus(std::path::Path::new("/proc/self")).len() < 2 {
        eprintln!("SKIP control-thread placement check: this process has one CPU");
        return;
    }
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    let worker = allowed_cpus(&proc);
    assert_eq!(
        worker.len(),
        1,
        "worker 0 is pinned to its lcore's CPU: {worker:?}"
    );
    let mut seen = 0;
    for task in std::fs::read_dir(proc.join("task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if ["tickmesh-contro", "tm-dpdk-hup", "tm-dpdk-nic"].contains(&comm) {
            seen += 1;
            let cpus = allowed_cpus(&task.path());
            assert!(
                !cpus.contains(&worker[0]),
                "{comm} may run on worker 0's CPU {}: {cpus:?}",
                worker[0]
            );
        }
    }
    assert!(
        seen >= 3,
        "control threads not found under {}",
        proc.display()
    );
}

#[test]
fn control_socket_apply_moves_new_flows_and_keeps_established_ones() {
    if [
        "TM_E2E_ECHO",
        "TM_E2E_CLIENT",
        "TM_E2E_NAMED_ECHO",
        "TM_E2E_PORT_CLIENT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok())
    {
        return;
    }
    if !dpdk_common::dpdk_usable() {
        return;
    }
    if !sh(&["ip", "netns", "add", "tmxprobe"]) {
        eprintln!("SKIP: cannot create network namespaces here");
        return;
    }
    sh(&["ip", "netns", "del", "tmxprobe"]);
    for ns in CTL_NS {
        sh(&["ip", "netns", "del", ns]);
    }
    let _cleanup = CtlNamespaces;
    for ns in CTL_NS {
        must(&["ip", "netns", "add", ns]);
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let [c, b1, b2, l] = CTL_NS;
    must(&["ip", "-n", l, "link", "add", "br0", "type", "bridge"]);
    must(&["ip", "-n", l, "link", "set", "br0", "up"]);
    for (ns, ours, theirs, mac, addr, gw) in [
        (c, "c0", "c1", CLIENT_MAC, "10.99.1.2/24", "10.99.1.1"),
        (b1, "b0", "b1", BACKEND_MAC, "10.99.2.2/24", "10.99.2.1"),
        (b2, "d0", "d1", B2_MAC, "10.99.3.2/24", "10.99.3.1"),
    ] {
        must(&[
            "ip", "-n", l, "link", "add", ours, "type", "veth", "peer", "name", theirs, "netns", ns,
        ]);
        must(&["ip", "-n", l, "link", "set", ours, "master", "br0", "up"]);
        must(&["ip", "-n", ns, "link", "set", theirs, "address", mac, "up"]);
        must(&["ip", "-n", ns, "addr", "add", addr, "dev", theirs]);
        must(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
        sh(&[
            "ip", "netns", "exec", ns, "ethtool", "-K", theirs, "tx", "off",
        ]);
    }

    let dir = dpdk_common::tempdir("tap-ctl");
    let d = dir.display().to_string();
    let sock = dir.join("ctl.sock").display().to_string();
    std::fs::write(dir.join("cfg.yaml"), echo_cfg(&[B1])).unwrap();
    let echo1 = format!("{B1},b1,{d}");
    let echo2 = format!("{B2},b2,{d}");
    let backends = [
        helper(b1, "role_named_echo", ("TM_E2E_NAMED_ECHO", &echo1)),
        helper(b2, "role_named_echo", ("TM_E2E_NAMED_ECHO", &echo2)),
    ];
    let neighbors = [
        format!("10.99.1.2={CLIENT_MAC}"),
        format!("10.99.2.2={BACKEND_MAC}"),
        format!("10.99.3.2={B2_MAC}"),
    ];
    let mut lb = Command::new("ip");
    lb.args(["netns", "exec", l, env!("CARGO_BIN_EXE_tickmesh")])
        .args(["run", "--engine", "dpdk", "-w", "1", "--idle", "park", "-c"])
        .arg(dir.join("cfg.yaml"))
        .args(["--control", &sock, "--dpdk-no-huge"])
        .args(["--dpdk-file-prefix", "tm-test-tap-ctl"])
        .args(["--dpdk-vdev", "net_tap0,iface=dtap0"]);
    for ip in ["10.99.1.1", "10.99.2.1", "10.99.3.1"] {
        lb.args(["--dpdk-local-ip", ip]);
    }
    for n in &neighbors {
        lb.args(["--dpdk-neighbor", n]);
    }
    let mut lb = lb
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = lb.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("dpdk engine running") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let stop = |lb: &mut Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &lb.id().to_string()])
            .status();
    };
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        stop(&mut lb);
        let _ = lb.wait();
        panic!("the balancer did not start: {}", log.join().unwrap());
    }
    control_threads_leave_the_worker_cpu(lb.id());
    must(&[
        "ip",
        "-n",
        l,
        "link",
        "set",
        "dtap0",
        "address",
        "02:00:00:00:99:aa",
    ]);
    must(&["ip", "-n", l, "link", "set", "dtap0", "master", "br0", "up"]);

    // A port whose flow goes to b2 once b2 is in the cluster, and another one.
    let sticky = port_for(&[B1, B2], B2, 20000);
    let fresh = port_for(&[B1, B2], B2, sticky + 1);
    let spec = format!("{CTL_VIP},{sticky},{d}");
    let long = helper(c, "role_port_client", ("TM_E2E_PORT_CLIENT", &spec));
    // The established flow has had its first answer (from b1) before the apply.
    let start = Instant::now();
    let stats_json = |sock: &str| -> serde_json::Value {
        serde_json::from_str(&tickmesh_ctl(&["stats", "--json", "--control", sock])).unwrap()
    };
    let block = |s: &serde_json::Value, name: &str, counter: &str| -> u64 {
        s["packets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map_or(0, |b| b["counters"][counter].as_u64().unwrap_or(0))
    };
    while block(&stats_json(&sock), "vip/echo", "reply_packets") < 2
        && start.elapsed() < Duration::from_secs(15)
    {
        std::thread::sleep(Duration::from_millis(50));
    }

    std::fs::write(dir.join("two.yaml"), echo_cfg(&[B1, B2])).unwrap();
    let applied = tickmesh_ctl(&["apply", "--control", &sock, "-f", &format!("{d}/two.yaml")]);
    assert!(applied.contains("configured"), "{applied}");
    std::fs::write(dir.join("go"), "").unwrap();
    let new_spec = format!("{CTL_VIP},{fresh}");
    let new = helper(c, "role_port_client", ("TM_E2E_PORT_CLIENT", &new_spec));
    let long_out = long.wait_with_output().unwrap();
    let new_out = new.wait_with_output().unwrap();
    let stats = stats_json(&sock);
    let table = tickmesh_ctl(&["stats", "--control", &sock]);

    // SIGHUP re-applies the edited --config: b1 leaves the cluster.
    std::fs::write(dir.join("cfg.yaml"), echo_cfg(&[B2])).unwrap();
    sh(&["kill", "-HUP", &lb.id().to_string()]);
    let start = Instant::now();
    let mut generation = 0;
    while generation != 3 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        generation = stats_json(&sock)["generation"].as_u64().unwrap_or(0);
    }
    let after_hup = tickmesh_ctl(&["get", "clusters", "--control", &sock]);

    std::fs::write(dir.join("done"), "").unwrap();
    stop(&mut lb);
    let lout = lb.wait_with_output().unwrap();
    let lerr = log.join().unwrap();
    for b in backends {
        let _ = b.wait_with_output();
    }
    let ctx = format!(
        "long client: {}{}\nnew client: {}{}\nstats: {table}\nbalancer: {}\n{lerr}",
        String::from_utf8_lossy(&long_out.stdout),
        String::from_utf8_lossy(&long_out.stderr),
        String::from_utf8_lossy(&new_out.stdout),
        String::from_utf8_lossy(&new_out.stderr),
        String::from_utf8_lossy(&lout.stdout),
    );
    let long_said = String::from_utf8_lossy(&long_out.stdout);
    assert!(long_said.contains("ANSWER b1:one"), "{ctx}");
    assert!(
        long_said.contains("ANSWER b1:two"),
        "the established flow stayed on b1: {ctx}"
    );
    assert!(
        String::from_utf8_lossy(&new_out.stdout).contains("ANSWER b2:one"),
        "a new flow went to the new backend: {ctx}"
    );
    assert_eq!(stats["generation"], 2, "{ctx}");
    assert!(
        block(&stats, "backend/echo/10.99.3.2:8080", "packets") >= 3,
        "{ctx}"
    );
    assert!(
        block(&stats, "backend/echo/10.99.2.2:8080", "packets") >= 4,
        "{ctx}"
    );
    assert!(block(&stats, "vip/echo", "flows_new") >= 2, "{ctx}");
    assert!(block(&stats, "port/net_tap0", "rx_packets") >= 10, "{ctx}");
    assert!(
        block(&stats, "port/net_tap0", "flow_table_entries") >= 2,
        "{ctx}"
    );
    assert!(
        table.contains("vip/echo") && table.contains("port/net_tap0"),
        "{ctx}"
    );
    assert_eq!(generation, 3, "SIGHUP re-applied --config: {ctx}");
    assert!(
        after_hup.contains("10.99.3.2:8080") && !after_hup.contains("10.99.2.2:8080"),
        "{after_hup}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
