//! `tickmesh nic show|set dpdk:PORT`: the same verbs on ports owned by DPDK — through the
//! running engine's port-control socket, and in the CLI's own EAL with --dpdk-vdev.
//! net_tap, net_ring and net_pcap in --no-huge mode: what these PMDs support is checked
//! for its real result, what they lack for the error naming the item and the PMD. The
//! engine runs inside a network namespace this test creates (net_tap makes an interface).
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tickmesh");
const NS: &str = "tmdnic";
const TAP: &str = "tmnictap";

fn nic(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("nic")
        .arg("--dpdk-socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("spawn tickmesh nic")
}

fn ok(o: Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "expected success:\n{out}\n{err}");
    out
}

fn fails(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

fn json(o: Output) -> serde_json::Value {
    let out = ok(o);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

fn offload<'a>(r: &'a serde_json::Value, dir: &str, dpdk: &str) -> Option<&'a serde_json::Value> {
    r["offloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["dir"] == dir && o["dpdk"] == dpdk)
}

struct Engine {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn nic_verbs_reach_the_ports_of_a_running_dpdk_engine() {
    if !dpdk_common::dpdk_usable() {
        return;
    }
    let dir = dpdk_common::tempdir("dpdk-nic");
    let socket = dir.join("nic.sock");
    // The config's kernel-side NIC profile applies to a veth in the engine's namespace.
    std::fs::write(
        dir.join("profile.yaml"),
        "devices:\n  va:\n    features:\n      gro: on\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("cfg.yaml"),
        format!(
            "nic: {{profile: \"{}\", devices: [va]}}\nlisteners:\n  - {{name: web, address: \"10.0.0.100:80\", cluster: p}}\nclusters:\n  - {{name: p, endpoints: [\"10.1.0.1:80\"]}}\n",
            dir.join("profile.yaml").display()
        ),
    )
    .unwrap();
    let _ = Command::new("ip")
        .args(["netns", "del", NS])
        .stderr(Stdio::null())
        .status();
    assert!(Command::new("ip")
        .args(["netns", "add", NS])
        .status()
        .unwrap()
        .success());
    let in_ns = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", NS])
            .args(args)
            .output()
            .unwrap()
    };
    ok(in_ns(&[
        "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb",
    ]));
    let gro = || {
        let k = String::from_utf8_lossy(&in_ns(&["ethtool", "-k", "va"]).stdout).into_owned();
        k.lines()
            .find_map(|l| l.strip_prefix("generic-receive-offload: "))
            .map(|v| v.starts_with("on"))
            .unwrap_or_else(|| panic!("ethtool -k va: {k}"))
    };
    assert!(!gro(), "veth starts with gro off");
    let child = Command::new("ip")
        .args([
            "netns", "exec", NS, BIN, "run", "--engine", "dpdk", "-w", "2",
        ])
        .args(["--idle", "park", "-c"])
        .arg(dir.join("cfg.yaml"))
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .args(["--dpdk-no-huge", "--dpdk-file-prefix", "tm-test-nic"])
        .args(["--dpdk-vdev", &format!("net_tap0,iface={TAP}")])
        .args(["--dpdk-vdev", "net_ring0", "--dpdk-vdev", "net_null0"])
        .arg("--dpdk-nic-socket")
        .arg(&socket)
        .arg("--dpdk-eal-arg=--log-level=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut engine = Engine { child, dir };
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        socket.exists(),
        "the engine did not open its port-control socket"
    );

    // show, by name and by port id.
    let tap = json(nic(&socket, &["show", "dpdk:net_tap0", "--json"]));
    assert_eq!(tap["driver"], "net_tap");
    assert_eq!(tap["channels"]["rx"], 2, "one RX queue per worker: {tap}");
    assert_eq!(tap["channels"]["tx"], 2);
    assert_eq!(tap["rings"]["rx"], 1024);
    assert!(tap["owner"].as_str().unwrap().contains("--engine dpdk"));
    let tso = offload(&tap, "tx", "TCP_TSO").expect("net_tap offers TSO");
    assert_eq!(tso["ethtool"], "tx-tcp-segmentation");
    assert_eq!(tso["available"], true);
    assert!(
        offload(&tap, "tx", "SECURITY").is_none(),
        "net_tap has no inline crypto"
    );
    // Independent check: net_tap made a kernel tap with one queue pair per DPDK queue.
    let queues = Command::new("ip")
        .args([
            "netns",
            "exec",
            NS,
            "ls",
            &format!("/sys/class/net/{TAP}/queues"),
        ])
        .output()
        .unwrap();
    let queues = String::from_utf8_lossy(&queues.stdout);
    assert!(
        queues.contains("rx-1") && queues.contains("tx-1"),
        "kernel tap queues: {queues}"
    );
    let text = ok(nic(&socket, &["show", "dpdk:1"]));
    assert!(
        text.contains("dpdk:net_ring0 (port 1): driver net_ring"),
        "{text}"
    );
    assert!(text.contains("rss: not supported by net_ring"), "{text}");
    assert!(
        text.contains("inline crypto (tls-hw/esp-hw): not offered"),
        "{text}"
    );

    // rings: workers park, the port restarts with the new descriptor count.
    let m = ok(nic(
        &socket,
        &["set", "dpdk:net_tap0", "rings", "rx=512", "tx=256"],
    ));
    assert!(m.contains("descriptors rx 1024→512 tx 1024→256"), "{m}");
    let tap = json(nic(&socket, &["show", "dpdk:net_tap0", "--json"]));
    assert_eq!(tap["rings"]["rx"], 512);
    assert_eq!(tap["rings"]["tx"], 256);
    assert_eq!(tap["link"]["up"], true, "the port was started again");

    // RSS: net_tap hashes IPv4/TCP with its two queues; it has no redirection table.
    let m = ok(nic(
        &socket,
        &["set", "dpdk:net_tap0", "rss", "hash", "ipv4,ipv4-tcp"],
    ));
    assert!(m.contains("rss hash functions now ipv4,ipv4-tcp"), "{m}");
    let e = fails(nic(
        &socket,
        &["set", "dpdk:net_tap0", "rss", "hash", "esp"],
    ));
    assert!(e.contains("rss hash esp: not supported by net_tap"), "{e}");
    let e = fails(nic(&socket, &["set", "dpdk:net_tap0", "rss", "equal", "2"]));
    assert!(e.contains("net_tap has no RSS redirection table"), "{e}");
    let e = fails(nic(
        &socket,
        &["set", "dpdk:net_ring0", "rss", "hash", "ipv4"],
    ));
    assert!(
        e.contains("not supported by net_ring (it hashes: nothing)"),
        "{e}"
    );

    // net_null emulates RSS fully (128-entry table, 40-byte key): every RSS verb works
    // there. DPDK has no outside tool to read a port, so the result is read back through
    // rte_eth_dev_rss_reta_query / rss_hash_conf_get, the API's own readers.
    let m = ok(nic(
        &socket,
        &["set", "dpdk:net_null0", "rss", "weights", "1", "3"],
    ));
    assert!(m.contains("(128 entries) now q0:32 q1:96"), "{m}");
    let reta = |r: &serde_json::Value| -> (usize, usize) {
        let t = r["rss"]["reta"].as_array().unwrap();
        assert_eq!(t.len(), 128, "{r}");
        (
            t.iter().filter(|q| **q == 0).count(),
            t.iter().filter(|q| **q == 1).count(),
        )
    };
    let null = json(nic(&socket, &["show", "dpdk:net_null0", "--json"]));
    assert_eq!(reta(&null), (32, 96));
    ok(nic(&socket, &["set", "dpdk:net_null0", "rss", "default"]));
    assert_eq!(
        reta(&json(nic(&socket, &["show", "dpdk:2", "--json"]))),
        (64, 64)
    );
    let e = fails(nic(
        &socket,
        &["set", "dpdk:net_null0", "rss", "equal", "3"],
    ));
    assert!(
        e.contains("3 queue(s) asked for, the port has 2 RX queue(s)"),
        "{e}"
    );
    let key: Vec<String> = (0..40).map(|i| format!("{:02x}", i + 1)).collect();
    let key = key.join(":");
    ok(nic(&socket, &["set", "dpdk:net_null0", "rss", "key", &key]));
    let e = fails(nic(
        &socket,
        &["set", "dpdk:net_null0", "rss", "key", &key[3..]],
    ));
    assert!(e.contains("39 bytes given, net_null takes 40 bytes"), "{e}");
    ok(nic(
        &socket,
        &["set", "dpdk:net_null0", "rss", "hash", "ipv4-udp,ipv6-udp"],
    ));
    let null = json(nic(&socket, &["show", "dpdk:net_null0", "--json"]));
    assert_eq!(null["rss"]["key"], key.as_str());
    assert_eq!(
        null["rss"]["enabled"],
        serde_json::json!(["ipv4-udp", "ipv6-udp"])
    );
    let e = fails(nic(
        &socket,
        &["set", "dpdk:net_null0", "rss", "hash", "ecpri"],
    ));
    assert!(
        e.contains("rss hash ecpri: not supported by net_null"),
        "{e}"
    );

    // Offloads in ethtool's words (a group sets the members the PMD offers), applied by
    // restarting the port with the new masks; what would change the frames the balancer
    // parses is refused on an engine port; what the PMD lacks is named.
    let m = ok(nic(
        &socket,
        &["set", "dpdk:net_tap0", "tso=on", "tx", "on"],
    ));
    assert!(
        m.contains("tx now IPV4_CKSUM,UDP_CKSUM,TCP_CKSUM,TCP_TSO"),
        "{m}"
    );
    let tap = json(nic(&socket, &["show", "dpdk:net_tap0", "--json"]));
    assert_eq!(offload(&tap, "tx", "TCP_TSO").unwrap()["on"], true, "{tap}");
    assert_eq!(offload(&tap, "tx", "UDP_CKSUM").unwrap()["on"], true);
    assert_eq!(
        tap["rings"]["rx"], 512,
        "descriptors kept across the restart"
    );
    ok(nic(&socket, &["set", "dpdk:net_tap0", "tso=off"]));
    let tap = json(nic(&socket, &["show", "dpdk:net_tap0", "--json"]));
    assert_eq!(offload(&tap, "tx", "TCP_TSO").unwrap()["on"], false);
    assert_eq!(offload(&tap, "tx", "TCP_CKSUM").unwrap()["on"], true);
    let e = fails(nic(&socket, &["set", "dpdk:net_tap0", "rx:SCATTER=on"]));
    assert!(
        e.contains("changes the frames the engine's balancer parses"),
        "{e}"
    );
    let e = fails(nic(&socket, &["set", "dpdk:net_tap0", "lro=on"]));
    assert!(
        e.contains("`lro` is not offered by net_tap (rx TCP_LRO)"),
        "{e}"
    );
    let e = fails(nic(
        &socket,
        &["set", "dpdk:net_ring0", "tls-hw-tx-offload=on"],
    ));
    assert!(e.contains("not offered by net_ring (tx SECURITY)"), "{e}");

    // Queues are the engine's (one per worker): refused with what to do instead.
    let e = fails(nic(&socket, &["set", "dpdk:net_tap0", "channels", "rx=1"]));
    assert!(e.contains("--workers"), "{e}");
    let e = fails(nic(&socket, &["set", "dpdk:net_tap0", "rings", "rx=70000"]));
    assert!(e.contains("`70000` is not a count"), "{e}");

    // rte_flow: net_ring has no flow API; net_tap's needs the kernel's flower classifier.
    let e = fails(nic(
        &socket,
        &[
            "set",
            "dpdk:net_ring0",
            "flow",
            "add",
            "udp4",
            "dst-port",
            "53",
            "action",
            "0",
        ],
    ));
    assert!(
        e.contains("rte_flow rules are not supported by net_ring"),
        "{e}"
    );
    let add = nic(
        &socket,
        &[
            "set",
            "dpdk:net_tap0",
            "flow",
            "add",
            "tcp4",
            "dst-ip",
            "10.0.0.100",
            "dst-port",
            "80",
            "action",
            "1",
        ],
    );
    if add.status.success() {
        let tc = Command::new("ip")
            .args([
                "netns", "exec", NS, "tc", "filter", "show", "dev", TAP, "ingress",
            ])
            .output()
            .unwrap();
        let tc = String::from_utf8_lossy(&tc.stdout);
        assert!(tc.contains("flower"), "tc shows the rule: {tc}");
        let show = ok(nic(&socket, &["show", "dpdk:net_tap0"]));
        assert!(
            show.contains("id 1: tcp4 src * dst 10.0.0.100 sport * dport 80 -> queue 1"),
            "{show}"
        );
        ok(nic(&socket, &["set", "dpdk:net_tap0", "flow", "del", "1"]));
    } else {
        let e = String::from_utf8_lossy(&add.stderr);
        assert!(e.contains("dpdk:net_tap0") && e.contains("rte_flow"), "{e}");
        eprintln!(
            "SKIP the rte_flow success path: this kernel has no flower classifier for net_tap ({})",
            e.trim()
        );
    }
    let e = fails(nic(&socket, &["set", "dpdk:net_tap0", "flow", "del", "7"]));
    assert!(e.contains("no rte_flow rule 7"), "{e}");

    // `nic show` without a device lists the engine's ports after the kernel's.
    let all = ok(nic(&socket, &["show"]));
    assert!(
        all.contains("dpdk:net_tap0 (port 0)") && all.contains("dpdk:net_ring0 (port 1)"),
        "{all}"
    );
    let all = json(nic(&socket, &["show", "--json"]));
    assert_eq!(all["dpdk_ports"].as_array().map(Vec::len), Some(3), "{all}");

    // A garbled request gets an error answer, and the engine keeps serving.
    {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(b"{\"port\": 7, \"words\": \n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["ok"], false);
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains("not a port-control request"),
            "{r}"
        );
    }
    ok(nic(&socket, &["show", "dpdk:0"]));

    // Bad names and no engine.
    let e = fails(nic(&socket, &["show", "dpdk:net_nope0"]));
    assert!(
        e.contains("no DPDK port `net_nope0`") && e.contains("dpdk:net_ring0"),
        "{e}"
    );
    let e = fails(nic(&engine.dir.join("none.sock"), &["show", "dpdk:0"]));
    assert!(e.contains("no DPDK engine serves port control"), "{e}");

    // The engine still runs and stops cleanly; its socket goes away.
    let _ = Command::new("kill")
        .args(["-TERM", &engine.child.id().to_string()])
        .status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = engine.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "engine did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "engine exit: {status}");
    assert!(!socket.exists(), "socket removed at exit");
}

#[test]
fn nic_opens_a_dpdk_port_in_its_own_eal_with_vdev() {
    if !dpdk_common::dpdk_usable() {
        return;
    }
    // In a namespace of its own: net_tap makes a kernel interface.
    struct Ns;
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", OWN_NS])
                .stderr(Stdio::null())
                .status();
        }
    }
    const OWN_NS: &str = "tmdnicown";
    let _ = Command::new("ip")
        .args(["netns", "del", OWN_NS])
        .stderr(Stdio::null())
        .status();
    assert!(Command::new("ip")
        .args(["netns", "add", OWN_NS])
        .status()
        .unwrap()
        .success());
    let _ns = Ns;
    let own = |vdev: &str, args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", OWN_NS, BIN, "nic", "--dpdk-vdev", vdev])
            .args(args)
            .output()
            .unwrap()
    };
    let text = ok(own("net_ring0", &["show", "dpdk:net_ring0"]));
    assert!(text.contains("driver net_ring"), "{text}");
    assert!(text.contains("owner: this command only"), "{text}");
    assert!(
        text.contains("channels (current/max): rx 1/16 tx 1/16"),
        "{text}"
    );
    // A change is shown from the same process (it ends when the command exits).
    let text = ok(own(
        "net_ring0",
        &["set", "dpdk:0", "channels", "combined", "4"],
    ));
    assert!(text.contains("rx queues 1→4 tx queues 1→4"), "{text}");
    assert!(
        text.contains("channels (current/max): rx 4/16 tx 4/16"),
        "{text}"
    );
    // Failure midway: each net_tap RX queue takes 1,024 mbufs from a pool of 8,191, so the
    // eighth queue cannot be filled; the port goes back to one queue pair.
    let tap = own(
        "net_tap0,iface=tmnicown",
        &["set", "dpdk:net_tap0", "channels", "combined", "16"],
    );
    let out = String::from_utf8_lossy(&tap.stdout).into_owned();
    let e = fails(tap);
    assert!(
        e.contains("rte_eth_rx_queue_setup (queue 8") && e.contains("were restored"),
        "{e}"
    );
    assert!(
        out.contains("channels (current/max): rx 1/16 tx 1/16"),
        "{out}"
    );
    let e = fails(own("net_ring0", &["set", "dpdk:0", "channels", "rx=17"]));
    assert!(
        e.contains("out of range (net_ring allows at most rx 16 tx 16)"),
        "{e}"
    );

    let dir = dpdk_common::tempdir("dpdk-nic-pcap");
    dpdk_common::write_pcap(&dir.join("in.pcap"), &[]);
    let pcap = format!(
        "net_pcap0,rx_pcap={},tx_pcap={}",
        dir.join("in.pcap").display(),
        dir.join("out.pcap").display()
    );
    let r: serde_json::Value =
        serde_json::from_str(&ok(own(&pcap, &["show", "dpdk:net_pcap0", "--json"]))).unwrap();
    assert_eq!(r["driver"], "net_pcap");
    assert!(
        r["rss"]["unavailable"]
            .as_str()
            .is_some_and(|s| s.contains("not supported by net_pcap")),
        "{r}"
    );
    let e = fails(own(
        &pcap,
        &["set", "dpdk:net_pcap0", "rss", "key", "00:11"],
    ));
    assert!(e.contains("rss key: net_pcap has no RSS hashing"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);

    let e = fails(own("net_ring0", &["show", "dpdk:net_ring9"]));
    assert!(
        e.contains("no DPDK port `net_ring9` among the devices given"),
        "{e}"
    );
    let e = fails(own("net_nosuchdriver0", &["show", "dpdk:0"]));
    assert!(e.contains("DPDK EAL failed to start"), "{e}");
}
