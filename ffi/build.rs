//! Finds the system DPDK with pkg-config, generates allow-listed bindings with bindgen and
//! compiles the C shim with the same cflags (DPDK's headers need `-include rte_config.h`
//! and its `-march`).
//!
//! When DPDK or libclang is missing the build does not panic with a backtrace: it sets
//! `cfg(dpdk_sys_missing)` and `src/lib.rs` stops the build with one `compile_error!`
//! that says what to install.

use std::env;
use std::path::PathBuf;

const INSTALL: &str = "apt-get install libdpdk-dev libclang-dev pkg-config";

fn main() {
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-env-changed=DPDK_SYS_FORCE_MISSING");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo::rustc-check-cfg=cfg(dpdk_sys_missing)");
    if let Err(why) = build() {
        println!("cargo:rustc-cfg=dpdk_sys_missing");
        println!("cargo:rustc-env=DPDK_SYS_MISSING={why}");
    }
}

fn build() -> Result<(), String> {
    if env::var_os("DPDK_SYS_FORCE_MISSING").is_some() {
        return Err("DPDK_SYS_FORCE_MISSING is set".into());
    }
    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .map_err(|e| {
            format!(
                "pkg-config cannot find libdpdk >= 22.11 ({})",
                e.to_string().lines().next().unwrap_or("")
            )
        })?;
    // Raw cflags, as pkg-config prints them: `-include rte_config.h` and `-march=...` must
    // reach both the C compiler and clang.
    let cflags = pkg_config_cflags()?;

    let mut cc = cc::Build::new();
    cc.file("shim.c").include(".").warnings(false).opt_level(3);
    for f in &cflags {
        cc.flag(f);
    }
    cc.try_compile("tickmesh_dpdk_shim")
        .map_err(|e| format!("compiling the C shim failed: {e}"))?;

    if !clang_available() {
        return Err("libclang (needed by bindgen) is not installed".into());
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let bindings = bindgen::Builder::default()
        .header("shim.h")
        .clang_args(&cflags)
        .clang_arg("-I.")
        // Without an allow-list bindgen emits ~33k lines that do not compile
        // (packed + aligned rte_l2tpv2_*, Debug on rte_gtp_*): keep to what we call.
        .allowlist_function("tm_.*")
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_eth_dev_.*")
        .allowlist_function("rte_eth_rx_queue_setup")
        .allowlist_function("rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_promiscuous_enable")
        .allowlist_function("rte_eth_macaddr_get")
        .allowlist_function("rte_eth_stats_get")
        .allowlist_function("rte_eth_link_get_nowait")
        // Port control (`tickmesh nic` on DPDK ports): queue info and rte_flow rules.
        .allowlist_function("rte_eth_rx_queue_info_get")
        .allowlist_function("rte_eth_tx_queue_info_get")
        .allowlist_function("rte_flow_validate")
        .allowlist_function("rte_flow_create")
        .allowlist_function("rte_flow_destroy")
        .allowlist_type("rte_flow_attr")
        .allowlist_type("rte_flow_item")
        .allowlist_type("rte_flow_action")
        .allowlist_type("rte_flow_action_queue")
        .allowlist_type("rte_flow_error")
        .allowlist_type("rte_eth_rss_reta_entry64")
        .allowlist_type("rte_eth_link")
        .allowlist_var("RTE_ETH_RETA_GROUP_SIZE")
        .allowlist_function("rte_eth_find_next_owned_by")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_pktmbuf_free_bulk")
        .allowlist_function("rte_mempool_free")
        .allowlist_function("rte_mempool_avail_count")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_get_next_lcore")
        .allowlist_function("rte_get_tsc_hz")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_cryptodev_.*")
        .allowlist_function("rte_crypto_op_pool_create")
        .allowlist_type("rte_mbuf")
        .allowlist_type("rte_eth_conf")
        .allowlist_type("rte_eth_dev_info")
        .allowlist_type("rte_eth_stats")
        .allowlist_type("rte_crypto_.*")
        .allowlist_type("rte_cryptodev_.*")
        .allowlist_var("RTE_CRYPTODEV_FF_.*")
        .allowlist_var("RTE_MAX_ETHPORTS")
        .allowlist_var("RTE_MAX_LCORE")
        .allowlist_var("RTE_ETHER_ADDR_LEN")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .allowlist_var("SOCKET_ID_ANY")
        .opaque_type("rte_l2tpv2_.*")
        .opaque_type("rte_gtp_.*")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .generate()
        .map_err(|e| format!("bindgen failed on the DPDK headers: {e}"))?;
    bindings
        .write_to_file(out.join("bindings.rs"))
        .map_err(|e| e.to_string())?;

    // The shim archive must come before libdpdk on the link line; pkg-config already
    // printed the rte_* libraries. PMDs are plugins the EAL loads from its driver folder.
    let _ = lib;
    Ok(())
}

fn pkg_config_cflags() -> Result<Vec<String>, String> {
    let out = std::process::Command::new(env::var("PKG_CONFIG").unwrap_or("pkg-config".into()))
        .args(["--cflags", "libdpdk"])
        .output()
        .map_err(|e| format!("cannot run pkg-config: {e}"))?;
    if !out.status.success() {
        return Err("pkg-config --cflags libdpdk failed".into());
    }
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    // `-include rte_config.h` is two tokens; keep them paired for cc's flag().
    let mut flags = Vec::new();
    let mut it = s.split_whitespace();
    while let Some(t) = it.next() {
        if t == "-include" {
            if let Some(f) = it.next() {
                flags.push(format!("-include{f}"));
            }
        } else {
            flags.push(t.to_string());
        }
    }
    Ok(flags)
}

fn clang_available() -> bool {
    // bindgen loads libclang at run time and panics when it cannot; look first.
    std::panic::catch_unwind(|| bindgen::clang_version().parsed.is_some()).unwrap_or(false)
}

#[allow(dead_code)]
fn install_hint() -> &'static str {
    INSTALL
}
