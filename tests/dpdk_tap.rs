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
