//! EAL start failures end the process with an error naming the cause and the fix.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::process::Command;

fn run(extra: &[&str]) -> (bool, String) {
    let dir = dpdk_common::tempdir("errors");
    std::fs::write(
        dir.join("cfg.yaml"),
        "listeners:\n  - {name: web, address: \"10.0.0.100:80\", cluster: p}\nclusters:\n  - {name: p, endpoints: [\"10.1.0.1:80\"]}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .args(["run", "--engine", "dpdk", "-w", "1", "-c"])
        .arg(dir.join("cfg.yaml"))
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .args(["--dpdk-file-prefix", "tm-test-errors"])
        .args(extra)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_vdev_no_ports_and_missing_hugepages_are_explained() {
    if !dpdk_common::dpdk_usable() {
        return;
    }
    let (ok, err) = run(&["--dpdk-no-huge", "--dpdk-vdev", "net_nosuchdriver0"]);
    assert!(!ok);
    assert!(err.contains("DPDK EAL failed to start"), "{err}");
    assert!(err.contains("--dpdk-vdev"), "names the flag to fix: {err}");

    let (ok, err) = run(&["--dpdk-no-huge"]);
    assert!(!ok);
    assert!(err.contains("DPDK found no Ethernet ports"), "{err}");

    let (ok, err) = run(&[
        "--dpdk-no-huge",
        "--dpdk-vdev",
        "net_null0",
        "--dpdk-neighbor",
        "10.0.0.1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("--dpdk-neighbor `10.0.0.1`: write IP=MAC"),
        "{err}"
    );

    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if meminfo.contains("HugePages_Free:        0") {
        let (ok, err) = run(&["--dpdk-vdev", "net_null0"]);
        assert!(!ok);
        assert!(
            err.contains("hugepages") && err.contains("--dpdk-no-huge"),
            "{err}"
        );
    } else {
        eprintln!("SKIP the no-hugepages case: this machine has free hugepages");
    }
}
