//! Links against the system DPDK and drives one burst through the shim: EAL in
//! `--no-huge` mode with a `net_null` port (one test per binary: the EAL initialises once
//! per process).

use std::ffi::CString;
use std::os::raw::c_char;

use dpdk_sys::*;

#[test]
fn eal_net_null_burst_through_the_shim() {
    let args = [
        "eal_smoke",
        "--no-huge",
        "--no-pci",
        "-m",
        "128",
        "-l",
        "0",
        "--file-prefix",
        "tm-ffi-smoke",
        "--log-level",
        "error",
        "--vdev",
        "net_null0",
    ];
    let owned: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut argv: Vec<*mut c_char> = owned.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    // SAFETY: argv points at NUL-terminated strings that outlive the call; first EAL init
    // in this process.
    let rc = unsafe { rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    assert!(rc >= 0, "rte_eal_init failed: errno {}", unsafe {
        tm_rte_errno()
    });
    // SAFETY: EAL is initialised; all calls below follow the ethdev set-up order.
    unsafe {
        assert_eq!(rte_eth_dev_count_avail(), 1);
        let name = CString::new("smoke").unwrap();
        let pool = rte_pktmbuf_pool_create(
            name.as_ptr(),
            1023,
            0,
            0,
            tm_mbuf_default_buf_size(),
            rte_socket_id() as i32,
        );
        assert!(!pool.is_null());
        let conf = rte_eth_conf::default();
        assert_eq!(rte_eth_dev_configure(0, 1, 1, &conf), 0);
        assert_eq!(
            rte_eth_rx_queue_setup(0, 0, 256, 0, std::ptr::null(), pool),
            0
        );
        assert_eq!(rte_eth_tx_queue_setup(0, 0, 256, 0, std::ptr::null()), 0);
        assert_eq!(rte_eth_dev_start(0), 0);
        let mut bufs = [std::ptr::null_mut::<rte_mbuf>(); 32];
        let n = tm_eth_rx_burst(0, 0, bufs.as_mut_ptr(), 32);
        assert!(n > 0, "net_null always has packets");
        assert!(!tm_pktmbuf_mtod(bufs[0]).is_null());
        let sent = tm_eth_tx_burst(0, 0, bufs.as_mut_ptr(), n);
        for b in &bufs[sent as usize..n as usize] {
            tm_pktmbuf_free(*b);
        }
        assert_eq!(rte_eth_dev_stop(0), 0);
        assert_eq!(rte_eth_dev_close(0), 0);
        rte_mempool_free(pool);
        assert_eq!(rte_eal_cleanup(), 0);
    }
}
