/* tickmesh dpdk-sys shim: DPDK's hot path is `static inline` (and a few macros), which
 * have no symbol to link against. Each tm_* function below wraps exactly one of them,
 * with no logic of its own, so that Rust can call it. */
#ifndef TICKMESH_DPDK_SHIM_H
#define TICKMESH_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_prefetch.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_cryptodev.h>
#include <rte_crypto.h>

/* rte_errno is a per-lcore (thread-local) macro. */
int tm_rte_errno(void);

/* ethdev bursts (rte_ethdev.h, static inline). */
uint16_t tm_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t tm_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

/* mbuf (rte_mbuf.h, static inline / macros). */
struct rte_mbuf *tm_pktmbuf_alloc(struct rte_mempool *mp);
int tm_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void tm_pktmbuf_free(struct rte_mbuf *m);
void *tm_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t tm_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t tm_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t tm_pktmbuf_nb_segs(const struct rte_mbuf *m);
char *tm_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *tm_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
char *tm_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int tm_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t tm_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t tm_pktmbuf_tailroom(const struct rte_mbuf *m);
uint32_t tm_mbuf_rss_hash(const struct rte_mbuf *m);
uint16_t tm_mbuf_default_buf_size(void);

/* misc inline helpers */
void tm_prefetch0(const void *p);
unsigned tm_lcore_id(void);
uint64_t tm_get_tsc_cycles(void);
/* RTE_ETH_RSS_* are RTE_BIT64() expressions bindgen cannot evaluate. */
uint64_t tm_eth_rss_ip_tcp_udp(void);
uint64_t tm_eth_tx_offload_mbuf_fast_free(void);

/* cryptodev bursts (rte_cryptodev.h, static inline) for the TLS offload engine. */
uint16_t tm_cryptodev_enqueue_burst(uint8_t dev, uint16_t qp, struct rte_crypto_op **ops, uint16_t n);
uint16_t tm_cryptodev_dequeue_burst(uint8_t dev, uint16_t qp, struct rte_crypto_op **ops, uint16_t n);
struct rte_crypto_op *tm_crypto_op_alloc(struct rte_mempool *mp, enum rte_crypto_op_type type);
void tm_crypto_op_free(struct rte_crypto_op *op);
int tm_crypto_op_attach_sym_session(struct rte_crypto_op *op, void *sess);
/* `rte_crypto_op.sym` is a zero-length union: the symmetric op follows the struct. */
struct rte_crypto_sym_op *tm_crypto_op_sym(struct rte_crypto_op *op);

/* External-buffer mbufs (rte_mbuf.h, static inline): a crypto op works on a job's own
 * buffer instead of a copy in the mbuf's data room. */
void tm_pktmbuf_attach_extbuf(struct rte_mbuf *m, void *buf_addr, rte_iova_t buf_iova,
                              uint16_t buf_len, struct rte_mbuf_ext_shared_info *shinfo);
void tm_pktmbuf_detach(struct rte_mbuf *m);
void tm_mbuf_ext_refcnt_set(struct rte_mbuf_ext_shared_info *shinfo, uint16_t value);

#endif
