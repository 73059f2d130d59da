//! `tickmesh nic` against real kernel devices: each test makes its own network namespace
//! with veth (and dummy, where the kernel has it), runs the built binary inside it with
//! `ip netns exec`, and checks every result with Debian's `ethtool` — the real tool, not
//! our reader. Host-wide settings (hugepages, busy-poll sysctls) are put back by guards,
//! even when an assertion fails. Needs root; skips with a message otherwise.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_tickmesh");
static SEQ: AtomicU32 = AtomicU32::new(0);
/// Host-wide files (hugepages, sysctls) are touched by one test at a time.
static HOST: Mutex<()> = Mutex::new(());

/// Effective uid 0, from /proc (no unsafe needed in tests).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace with a veth pair `va`/`vb` (4 rx and 4 tx queues each), or the
    /// reason this machine cannot make one.
    fn new() -> Result<Self, String> {
        if !is_root() {
            return Err("not root".into());
        }
        if Command::new("ethtool").arg("--version").output().is_err() {
            return Err("Debian's ethtool is not installed (scripts/setup installs it)".into());
        }
        let name = format!(
            "tmnic-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        if !matches!(ok, Ok(s) if s.success()) {
            return Err("`ip netns add` failed (no network namespaces here)".into());
        }
        let ns = Netns { name };
        let veth = ns.ip(&[
            "link",
            "add",
            "va",
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
        ]);
        if !veth.status.success() {
            return Err(format!(
                "cannot create veth: {}",
                String::from_utf8_lossy(&veth.stderr)
            ));
        }
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("ip runs")
    }

    fn exec(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .env("TICKMESH_LOG", "warn")
            .output()
            .expect("ip netns exec runs")
    }

    /// Run `tickmesh nic ARGS` inside the namespace.
    fn nic(&self, args: &[&str]) -> Output {
        let mut a = vec!["nic"];
        a.extend_from_slice(args);
        self.exec(BIN, &a)
    }

    /// `ethtool ARGS` inside the namespace; its stdout.
    fn ethtool(&self, args: &[&str]) -> String {
        let o = self.exec("ethtool", args);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The value `ethtool -k DEV` prints for one feature line (`on`, `off`).
    fn feature(&self, dev: &str, name: &str) -> String {
        let k = self.ethtool(&["-k", dev]);
        k.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("ethtool -k {dev} has no `{name}`:\n{k}"))
    }

    /// (rx, tx) current channel counts from `ethtool -l`.
    fn channels(&self, dev: &str) -> (String, String) {
        let l = self.ethtool(&["-l", dev]);
        let cur = l
            .split("Current hardware settings:")
            .nth(1)
            .unwrap_or("")
            .to_string();
        let get = |k: &str| {
            cur.lines()
                .find_map(|x| x.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_default()
        };
        (get("RX:"), get("TX:"))
    }

    fn read(&self, path: &str) -> String {
        String::from_utf8_lossy(&self.exec("cat", &[path]).stdout)
            .trim()
            .to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

macro_rules! netns_or_skip {
    () => {
        match Netns::new() {
            Ok(n) => n,
            Err(why) => {
                eprintln!("SKIP {}: {why}", module_path!());
                return;
            }
        }
    };
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "expected success:\n{}", text(&o));
    text(&o)
}

fn fails(o: Output) -> String {
    assert!(!o.status.success(), "expected failure:\n{}", text(&o));
    text(&o)
}

/// Puts a host file back to the value it had when the guard was made.
struct Restore {
    path: String,
    value: String,
}

impl Restore {
    fn new(path: &str) -> Option<Self> {
        std::fs::read_to_string(path).ok().map(|v| Restore {
            path: path.into(),
            value: v.trim().into(),
        })
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.value);
    }
}

const HP2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

#[test]
fn features_toggle_by_kernel_name_and_abbreviation() {
    let ns = netns_or_skip!();
    assert_eq!(ns.feature("va", "generic-receive-offload"), "off");
    ok(ns.nic(&["set", "va", "gro=on"]));
    assert_eq!(ns.feature("va", "generic-receive-offload"), "on");
    ok(ns.nic(&["set", "va", "rx-gro=off", "tso", "off"]));
    assert_eq!(ns.feature("va", "generic-receive-offload"), "off");
    assert_eq!(ns.feature("va", "tx-tcp-segmentation"), "off");
    assert_eq!(ns.feature("va", "tx-tcp6-segmentation"), "off");
    ok(ns.nic(&["set", "va", "tcp-segmentation-offload=on"]));
    assert_eq!(ns.feature("va", "tx-tcp-segmentation"), "on");
    // Checksumming: the group skips its fixed bits (tx-checksum-ipv4 is fixed on veth).
    ok(ns.nic(&["set", "va", "tx=off"]));
    assert_eq!(ns.feature("va", "tx-checksum-ip-generic"), "off");
    ok(ns.nic(&["set", "va", "tx-checksumming=on", "rx=off"]));
    assert_eq!(ns.feature("va", "tx-checksum-ip-generic"), "on");
    assert_eq!(ns.feature("va", "rx-checksumming"), "off");
    ok(ns.nic(&["set", "va", "rx-checksum=on"]));
    assert_eq!(ns.feature("va", "rx-checksumming"), "on");

    // Dummy devices, where the kernel has the driver.
    if ns
        .ip(&["link", "add", "d0", "type", "dummy"])
        .status
        .success()
    {
        ok(ns.nic(&["set", "d0", "gso=off"]));
        assert_eq!(ns.feature("d0", "generic-segmentation-offload"), "off");
        ok(ns.nic(&["set", "d0", "gso=on"]));
        assert_eq!(ns.feature("d0", "generic-segmentation-offload"), "on");
    } else {
        eprintln!(
            "SKIP dummy part: this kernel has no dummy driver (`ip link add type dummy` failed)"
        );
    }
}

#[test]
fn bad_feature_input_is_named_and_changes_nothing() {
    let ns = netns_or_skip!();
    let before = ns.ethtool(&["-k", "va"]);
    let e = fails(ns.nic(&["set", "va", "gro=on", "lro=on"]));
    assert!(e.contains("`lro` is fixed"), "{e}");
    let e = fails(ns.nic(&["set", "va", "gro=on", "rx-grox=on"]));
    assert!(
        e.contains("no feature `rx-grox`") && e.contains("did you mean `rx-gro`"),
        "{e}"
    );
    let e = fails(ns.nic(&["set", "va", "gro=maybe"]));
    assert!(e.contains("`maybe`"), "{e}");
    let e = fails(ns.nic(&["set", "nosuch0", "gro=on"]));
    assert!(e.contains("unknown device `nosuch0`"), "{e}");
    // veth has no RSS and no ntuple table: said so, by name.
    let e = fails(ns.nic(&["set", "va", "rss", "equal", "2"]));
    assert!(e.contains("does not support changing RSS"), "{e}");
    let e = fails(ns.nic(&[
        "set", "va", "flow", "add", "tcp4", "dst-port", "443", "action", "1",
    ]));
    assert!(e.contains("does not support ntuple"), "{e}");
    let e = fails(ns.nic(&[
        "set", "va", "flow", "add", "tcp4", "dst-port", "99999", "action", "1",
    ]));
    assert!(e.contains("`99999` is not a port"), "{e}");
    assert_eq!(
        ns.ethtool(&["-k", "va"]),
        before,
        "a rejected set changed something"
    );
}

#[test]
fn without_privilege_the_error_says_so_and_nothing_changes() {
    let ns = netns_or_skip!();
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP unprivileged run: no setpriv (util-linux)");
        return;
    }
    let before = ns.ethtool(&["-k", "va"]);
    let as_nobody = |args: &[&str]| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "nic",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let e = fails(as_nobody(&["set", "va", "gro=on", "tso=off"]));
    assert!(
        e.contains("insufficient privilege") && e.contains("CAP_NET_ADMIN"),
        "{e}"
    );
    assert!(e.contains("nothing was changed"), "{e}");
    let e = fails(as_nobody(&["set", "va", "rps", "0=1"]));
    assert!(
        e.contains("permission denied") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(ns.ethtool(&["-k", "va"]), before);
    // Reading needs no privilege.
    ok(as_nobody(&["show", "va"]));
}

#[test]
fn channels_change_on_veth_and_out_of_range_is_refused() {
    let ns = netns_or_skip!();
    assert_eq!(ns.channels("va"), ("4".into(), "4".into()));
    ok(ns.nic(&["set", "va", "channels", "rx=2", "tx=1"]));
    assert_eq!(ns.channels("va"), ("2".into(), "1".into()));
    let e = fails(ns.nic(&["set", "va", "channels", "rx=64"]));
    assert!(e.contains("rx=64 is out of range (maximum 4)"), "{e}");
    let e = fails(ns.nic(&["set", "va", "channels", "combined=2"]));
    assert!(e.contains("no `combined` channels"), "{e}");
    assert_eq!(ns.channels("va"), ("2".into(), "1".into()));
    ok(ns.nic(&["set", "va", "channels", "rx", "4", "tx", "4"]));
    assert_eq!(ns.channels("va"), ("4".into(), "4".into()));
}

#[test]
fn coalescing_is_written_where_the_driver_supports_it() {
    let ns = netns_or_skip!();
    let o = ns.nic(&[
        "set",
        "va",
        "coalesce",
        "adaptive-rx",
        "off",
        "rx-usecs",
        "0",
    ]);
    if !o.status.success() {
        let e = text(&o);
        assert!(
            e.contains("does not support") && e.contains("coalescing"),
            "{e}"
        );
        // The real tool agrees that the driver has no coalescing.
        let c = ns.exec("ethtool", &["-c", "va"]);
        assert!(
            !c.status.success(),
            "ethtool -c works on veth but we said unsupported:\n{}",
            text(&c)
        );
        eprintln!("SKIP coalescing write: the veth driver does not support coalescing on this kernel ({e})");
        return;
    }
    let c = ns.ethtool(&["-c", "va"]);
    assert!(
        c.contains("rx-usecs:\t0") || c.contains("rx-usecs: 0"),
        "{c}"
    );
}

/// Rings, RSS and ntuple rules: written and read back with `ethtool -g/-x/-n` where the
/// driver has them; where it does not, the real tool must agree that it does not, and the
/// part is skipped with a message (veth on current kernels has none of the three).
#[test]
fn rings_rss_and_ntuple_are_written_where_the_driver_supports_them() {
    let ns = netns_or_skip!();
    let mut skipped = Vec::new();
    let mut unsupported = |what: &str, ours: Output, ethtool_args: &[&str]| -> bool {
        if ours.status.success() {
            return false;
        }
        let e = text(&ours);
        assert!(e.contains("does not support"), "{what}: {e}");
        let real = ns.exec("ethtool", ethtool_args);
        assert!(
            !real.status.success() || text(&real).contains("not supported"),
            "ethtool {} works on veth but we said unsupported:\n{}",
            ethtool_args.join(" "),
            text(&real)
        );
        skipped.push(format!("{what} ({})", e.trim()));
        true
    };

    if !unsupported(
        "rings",
        ns.nic(&["set", "va", "rings", "rx=128"]),
        &["-g", "va"],
    ) {
        let g = ns.ethtool(&["-g", "va"]);
        let cur = g.split("Current hardware settings:").nth(1).unwrap_or("");
        assert!(cur.contains("RX:\t\t128") || cur.contains("RX: 128"), "{g}");
    }
    if !unsupported(
        "rss",
        ns.nic(&["set", "va", "rss", "equal", "2"]),
        &["-x", "va"],
    ) {
        let x = ns.ethtool(&["-x", "va"]);
        let table: Vec<&str> = x
            .lines()
            .filter(|l| {
                l.trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
                    && l.contains(':')
            })
            .flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace())
            .collect();
        assert!(
            !table.is_empty() && table.iter().all(|q| *q == "0" || *q == "1"),
            "{x}"
        );
        ok(ns.nic(&["set", "va", "rss", "default"]));
    }
    if !unsupported(
        "ntuple",
        ns.nic(&[
            "set", "va", "flow", "add", "tcp4", "dst-port", "443", "action", "1",
        ]),
        &["-n", "va"],
    ) {
        let n = ns.ethtool(&["-n", "va"]);
        assert!(n.contains("Dest port: 443"), "{n}");
    }
    for s in skipped {
        eprintln!("SKIP {s}: veth has no such operation on this kernel, and no netdevsim or NIC is available here");
    }
}

#[test]
fn rps_and_xps_masks_are_written_to_sysfs() {
    let ns = netns_or_skip!();
    ok(ns.nic(&["set", "va", "rps", "0=0-1", "1=1"]));
    assert_eq!(
        u32::from_str_radix(&ns.read("/sys/class/net/va/queues/rx-0/rps_cpus"), 16).unwrap(),
        3
    );
    assert_eq!(
        u32::from_str_radix(&ns.read("/sys/class/net/va/queues/rx-1/rps_cpus"), 16).unwrap(),
        2
    );
    ok(ns.nic(&["set", "va", "xps", "2=0"]));
    assert_eq!(
        u32::from_str_radix(&ns.read("/sys/class/net/va/queues/tx-2/xps_cpus"), 16).unwrap(),
        1
    );
    let e = fails(ns.nic(&["set", "va", "rps", "9=0"]));
    assert!(e.contains("no rps queue 9"), "{e}");
    let e = fails(ns.nic(&["set", "va", "rps", "0=4000"]));
    assert!(e.contains("CPU 4000 does not exist"), "{e}");
    let e = fails(ns.nic(&["set", "va", "irq-affinity", "0=0"]));
    assert!(e.contains("no MSI interrupts"), "{e}");
}

#[test]
fn show_reports_what_ethtool_reports() {
    let ns = netns_or_skip!();
    let s = ok(ns.nic(&["show", "va"]));
    assert!(s.contains("driver veth"), "{s}");
    assert!(s.contains("channels (current/max): rx 4/4, tx 4/4"), "{s}");
    let j = ok(ns.nic(&["show", "va", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&j[..j.rfind('}').unwrap() + 1]).unwrap();
    let feats = v["devices"][0]["features"]
        .as_array()
        .expect("features array");
    // Every feature line of `ethtool -k` that is a kernel name matches our on/off.
    let k = ns.ethtool(&["-k", "va"]);
    let mut compared = 0;
    for f in feats {
        let name = f["name"].as_str().unwrap();
        if let Some(line) = k
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{name}: ")))
        {
            let on = line.split_whitespace().nth(1) == Some("on");
            assert_eq!(f["active"].as_bool(), Some(on), "{name}: {line}");
            assert_eq!(
                f["changeable"].as_bool(),
                Some(!line.contains("[fixed]")),
                "{name}: {line}"
            );
            compared += 1;
        }
    }
    assert!(compared > 30, "compared only {compared} features");
    let e = fails(ns.nic(&["show", "nosuch0"]));
    assert!(e.contains("unknown device `nosuch0`"), "{e}");
}

#[test]
fn profile_dry_run_apply_and_rollback_after_a_failure_midway() {
    let ns = netns_or_skip!();
    let _host = HOST.lock().unwrap_or_else(|p| p.into_inner());
    let hp = Restore::new(HP2M);
    let hp_before: u64 = hp.as_ref().map_or(0, |r| r.value.parse().unwrap_or(0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let hugepages = if hp.is_some() {
        format!("host:\n  hugepages: {{2M: {}}}\n", hp_before + 2)
    } else {
        String::new()
    };
    // tx off drops tso in the kernel, so asking for tso on afterwards must fail — after
    // hugepages, channels, gro and tx have already changed.
    std::fs::write(
        &path,
        format!(
            "{hugepages}devices:\n  va:\n    channels: {{rx: 2}}\n    features:\n      gro: on\n      tx: off\n      tso: on\n    rps: {{0: \"0\"}}\n"
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let k_before = ns.ethtool(&["-k", "va"]);
    let rps_before = ns.read("/sys/class/net/va/queues/rx-0/rps_cpus");

    let d = ok(ns.nic(&["apply", "-f", p, "--dry-run"]));
    assert!(d.contains("~ va feature gro=on: off -> on"), "{d}");
    assert!(d.contains("~ va channels rx=2: rx=4 -> rx=2"), "{d}");
    assert!(d.contains("= va feature tso=on (already)"), "{d}");
    assert_eq!(
        ns.ethtool(&["-k", "va"]),
        k_before,
        "dry run changed features"
    );
    assert_eq!(ns.channels("va"), ("4".into(), "4".into()));

    let e = fails(ns.nic(&["apply", "-f", p]));
    assert!(e.contains("(va feature tso=on) failed"), "{e}");
    assert!(
        e.contains("rolled back") && e.contains("previous settings are restored"),
        "{e}"
    );
    // Everything is as before, by ethtool's and sysfs's account.
    assert_eq!(ns.ethtool(&["-k", "va"]), k_before, "features not restored");
    assert_eq!(
        ns.channels("va"),
        ("4".into(), "4".into()),
        "channels not restored"
    );
    assert_eq!(
        ns.read("/sys/class/net/va/queues/rx-0/rps_cpus"),
        rps_before
    );
    if hp.is_some() {
        assert_eq!(
            std::fs::read_to_string(HP2M).unwrap().trim(),
            hp_before.to_string(),
            "hugepages not restored"
        );
    }

    // Without the impossible step the same profile applies, and again is a no-op.
    let good = std::fs::read_to_string(&path)
        .unwrap()
        .replace("      tso: on\n", "");
    std::fs::write(&path, good).unwrap();
    let out = ok(ns.nic(&["apply", "-f", p]));
    assert!(out.contains("changed va feature gro=on"), "{out}");
    assert_eq!(ns.feature("va", "generic-receive-offload"), "on");
    assert_eq!(ns.feature("va", "tx-checksum-ip-generic"), "off");
    assert_eq!(ns.channels("va"), ("2".into(), "4".into()));
    assert_eq!(
        u32::from_str_radix(&ns.read("/sys/class/net/va/queues/rx-0/rps_cpus"), 16).unwrap(),
        1
    );
    if hp.is_some() {
        assert_eq!(
            std::fs::read_to_string(HP2M).unwrap().trim(),
            (hp_before + 2).to_string()
        );
    }
    let again = ok(ns.nic(&["apply", "-f", p]));
    assert!(again.contains("nothing to change"), "{again}");
}

#[test]
fn profile_errors_name_the_item_and_change_nothing() {
    let ns = netns_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let k_before = ns.ethtool(&["-k", "va"]);
    for (yaml, needle) in [
        (
            "devices:\n  va:\n    featurs: {gro: on}\n",
            "unknown field `featurs`",
        ),
        (
            "devices:\n  va:\n    features: {gro: on}\n    channels: {rx: 99}\n",
            "rx=99 is out of range (maximum 4)",
        ),
        (
            "devices:\n  va:\n    features: {gro: on, lro: on}\n",
            "`lro` is fixed",
        ),
        (
            "devices:\n  vz:\n    features: {gro: on}\n",
            "unknown device `vz`",
        ),
        (
            "devices:\n  va:\n    features: {gro: on}\n    coalesce: {rx-usecs: 0}\n",
            "does not support changing interrupt coalescing",
        ),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let e = fails(ns.nic(&["apply", "-f", path.to_str().unwrap()]));
        assert!(e.contains(needle), "{yaml:?}: {e}");
        assert_eq!(
            ns.ethtool(&["-k", "va"]),
            k_before,
            "{yaml:?} changed something"
        );
    }
    let path = dir.path().join("typo.yaml");
    std::fs::write(
        &path,
        "devices:\n  va:\n    features: {gro: on}\n    rss: {equall: 2}\n",
    )
    .unwrap();
    let e = fails(ns.nic(&["apply", "-f", path.to_str().unwrap()]));
    assert!(e.contains("equall") && e.contains("line 4"), "{e}");
    // The shipped profile needs --dev for its "*" entry; busy_poll is host-wide and not
    // visible inside a network namespace: the error says so and nothing changes.
    let e = fails(ns.nic(&["apply", "-f", "low-latency"]));
    assert!(e.contains("--dev"), "{e}");
    let d = ok(ns.nic(&["apply", "-f", "low-latency", "--dev", "va", "--dry-run"]));
    assert!(
        d.contains("net.core.busy_poll") && d.contains("host-wide"),
        "{d}"
    );
}

#[test]
fn shipped_low_latency_profile_applies_to_veth_leaving_out_what_veth_lacks() {
    let ns = netns_or_skip!();
    let shipped = String::from_utf8(ok_raw(ns.nic(&["profile", "low-latency"]))).unwrap();
    // The host part (busy_poll) is host-wide and invisible inside a namespace: keep the
    // device part only.
    let devices = &shipped[shipped.find("\ndevices:").expect("devices section")..];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ll.yaml");
    std::fs::write(&path, devices).unwrap();
    let p = path.to_str().unwrap();
    ok(ns.nic(&["set", "va", "gro=on"]));
    let d = ok(ns.nic(&["apply", "-f", p, "--dev", "va", "--dry-run"]));
    assert!(
        d.contains("skipped va coalesce") && d.contains("~ va feature gro=off: on -> off"),
        "{d}"
    );
    assert!(d.contains("= va feature lro=off (already)"), "{d}");
    let out = ok(ns.nic(&["apply", "-f", p, "--dev", "va"]));
    assert!(out.contains("changed va feature gro=off"), "{out}");
    assert_eq!(ns.feature("va", "generic-receive-offload"), "off");
    assert_eq!(ns.feature("va", "large-receive-offload"), "off");
}

fn ok_raw(o: Output) -> Vec<u8> {
    assert!(o.status.success(), "expected success:\n{}", text(&o));
    o.stdout
}

#[test]
fn host_busy_poll_and_hugepages_set_and_restored() {
    if !is_root() {
        eprintln!("SKIP host_busy_poll_and_hugepages: not root");
        return;
    }
    let _host = HOST.lock().unwrap_or_else(|p| p.into_inner());
    let (Some(bp), Some(br)) = (
        Restore::new("/proc/sys/net/core/busy_poll"),
        Restore::new("/proc/sys/net/core/busy_read"),
    ) else {
        eprintln!("SKIP host busy_poll: /proc/sys/net/core/busy_poll is not visible here");
        return;
    };
    // Host-wide settings are set from the host's namespace (no device involved).
    let run = |args: &[&str]| Command::new(BIN).arg("nic").args(args).output().unwrap();
    let want_poll = if bp.value == "50" { "51" } else { "50" };
    ok(run(&["busy-poll", want_poll, "--read", "7"]));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/core/busy_poll")
            .unwrap()
            .trim(),
        want_poll
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/core/busy_read")
            .unwrap()
            .trim(),
        "7"
    );
    drop((bp, br));
    if let Some(hp) = Restore::new(HP2M) {
        let n: u64 = hp.value.parse().unwrap();
        ok(run(&["hugepages", &(n + 1).to_string(), "--size", "2M"]));
        assert_eq!(
            std::fs::read_to_string(HP2M).unwrap().trim(),
            (n + 1).to_string()
        );
    }
    let e = fails(run(&["hugepages", "1", "--size", "3M"]));
    assert!(e.contains("no 3M hugepages"), "{e}");
    let e = fails(run(&["hugepages", "1", "--size", "huge"]));
    assert!(e.contains("not a hugepage size"), "{e}");
}

#[test]
fn bind_refuses_devices_without_pci_and_unknown_state() {
    let ns = netns_or_skip!();
    // A bind/unbind round trip needs a spare PCI NIC and the vfio-pci module; a test must
    // never take the machine's own NIC away, so only the refusals are checked here.
    eprintln!(
        "SKIP vfio-pci bind/unbind round trip: needs a spare PCI NIC (none is given to tests; vfio-pci {})",
        if std::path::Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
            "is loaded"
        } else {
            "is not loaded and this kernel has no modules to load"
        }
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bind.json");
    let o = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, BIN, "nic", "bind", "va", "vfio-pci",
        ])
        .env("TICKMESH_NIC_STATE", &state)
        .output()
        .unwrap();
    let e = fails(o);
    assert!(
        e.contains("not backed by a PCI device") || e.contains("vfio-pci is not loaded"),
        "{e}"
    );
    let o = Command::new(BIN)
        .args(["nic", "unbind", "va"])
        .env("TICKMESH_NIC_STATE", &state)
        .output()
        .unwrap();
    let e = fails(o);
    assert!(e.contains("no binding remembered for `va`"), "{e}");
    assert!(!state.exists(), "a refused bind wrote state");
}

#[test]
fn the_daemon_applies_its_configs_nic_profile_at_start_and_refuses_a_bad_one() {
    let ns = netns_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.yaml");
    std::fs::write(&profile, "devices:\n  va:\n    features:\n      gro: on\n").unwrap();
    let cfg = dir.path().join("tickmesh.yaml");
    let control = dir.path().join("control.sock");
    let write_cfg = |profile: &std::path::Path| {
        std::fs::write(
            &cfg,
            format!(
                "nic: {{profile: \"{}\", devices: [va], drift_check: 1s}}\nlisteners:\n  - {{name: l, address: \"127.0.0.1:7000\", cluster: c}}\nclusters:\n  - {{name: c, endpoints: [\"127.0.0.1:9000\"]}}\n",
                profile.display()
            ),
        )
        .unwrap()
    };
    write_cfg(&profile);
    assert_eq!(ns.feature("va", "generic-receive-offload"), "off");
    // `ip netns exec` runs the daemon inside the namespace, where `va` lives.
    let daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            BIN,
            "run",
            "--workers",
            "1",
            "--engine",
            "epoll",
        ])
        .arg("--config")
        .arg(&cfg)
        .arg("--control")
        .arg(&control)
        .env("TICKMESH_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !control.exists() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(control.exists(), "the daemon did not start");
    assert_eq!(
        ns.feature("va", "generic-receive-offload"),
        "on",
        "profile applied at start"
    );
    // Drift: a change behind the daemon's back is reported (and not reverted).
    assert!(ns
        .exec("ethtool", &["-K", "va", "gro", "off"])
        .status
        .success());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        ns.feature("va", "generic-receive-offload"),
        "off",
        "drift is reported, never changed back"
    );
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("nic drift from profile") && log.contains("va") && log.contains("gro"),
        "drift warning in the daemon's log:\n{log}"
    );

    // A profile with a typo: the daemon does not start, and says which profile and field.
    std::fs::write(&profile, "devices:\n  va:\n    featurs:\n      gro: off\n").unwrap();
    let out = ns.exec(
        BIN,
        &[
            "run",
            "--workers",
            "1",
            "--config",
            cfg.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let e = fails(out);
    assert!(e.contains("NIC profile") && e.contains("featurs"), "{e}");
    assert_eq!(
        ns.feature("va", "generic-receive-offload"),
        "off",
        "nothing changed (gro stays as the drift check left it)"
    );
}
