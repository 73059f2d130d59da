//! Raw bindings to the system DPDK (Debian 12 `libdpdk-dev`, DPDK 22.11).
//!
//! Owns nothing but declarations: bindgen output over an allow-list of the `rte_*` API
//! tickmesh calls, and the `tm_*` C shim (see `shim.h`) that gives DPDK's `static inline`
//! hot-path functions and macros a symbol. Everything here is `unsafe` to call; the safe
//! wrappers live in tickmesh's `engine::dpdk` (ports, mbufs) and `tickmesh-offload`
//! (cryptodev). Never add logic here.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

#[cfg(dpdk_sys_missing)]
compile_error!(concat!(
    "dpdk-sys: DPDK 22.11 development files are not usable on this machine: ",
    env!("DPDK_SYS_MISSING"),
    ". Install them with `apt-get install libdpdk-dev libclang-dev pkg-config` ",
    "(or run `scripts/setup --dpdk`), or build without `--features dpdk`."
));

#[cfg(not(dpdk_sys_missing))]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
