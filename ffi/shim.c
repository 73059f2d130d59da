/* See shim.h: one thin wrapper per DPDK static-inline function or macro. */
#include "shim.h"

int tm_rte_errno(void) { return rte_errno; }

uint16_t tm_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t tm_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{ return rte_eth_tx_burst(port, queue, pkts, n); }

struct rte_mbuf *tm_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int tm_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{ return rte_pktmbuf_alloc_bulk(mp, mbufs, count); }
void tm_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void *tm_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }
uint16_t tm_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t tm_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t tm_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
char *tm_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *tm_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
char *tm_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
int tm_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
uint16_t tm_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t tm_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint32_t tm_mbuf_rss_hash(const struct rte_mbuf *m)
{ return (m->ol_flags & RTE_MBUF_F_RX_RSS_HASH) ? m->hash.rss : 0; }
uint16_t tm_mbuf_default_buf_size(void) { return RTE_MBUF_DEFAULT_BUF_SIZE; }

void tm_prefetch0(const void *p) { rte_prefetch0(p); }
unsigned tm_lcore_id(void) { return rte_lcore_id(); }
uint64_t tm_get_tsc_cycles(void) { return rte_get_tsc_cycles(); }
uint64_t tm_eth_rss_ip_tcp_udp(void) { return RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP; }
uint64_t tm_eth_tx_offload_mbuf_fast_free(void) { return RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE; }

uint16_t tm_cryptodev_enqueue_burst(uint8_t dev, uint16_t qp, struct rte_crypto_op **ops, uint16_t n)
{ return rte_cryptodev_enqueue_burst(dev, qp, ops, n); }
uint16_t tm_cryptodev_dequeue_burst(uint8_t dev, uint16_t qp, struct rte_crypto_op **ops, uint16_t n)
{ return rte_cryptodev_dequeue_burst(dev, qp, ops, n); }
struct rte_crypto_op *tm_crypto_op_alloc(struct rte_mempool *mp, enum rte_crypto_op_type type)
{ return rte_crypto_op_alloc(mp, type); }
void tm_crypto_op_free(struct rte_crypto_op *op) { rte_crypto_op_free(op); }
int tm_crypto_op_attach_sym_session(struct rte_crypto_op *op, void *sess)
{ return rte_crypto_op_attach_sym_session(op, sess); }
struct rte_crypto_sym_op *tm_crypto_op_sym(struct rte_crypto_op *op) { return op->sym; }

void tm_pktmbuf_attach_extbuf(struct rte_mbuf *m, void *buf_addr, rte_iova_t buf_iova,
                              uint16_t buf_len, struct rte_mbuf_ext_shared_info *shinfo)
{ rte_pktmbuf_attach_extbuf(m, buf_addr, buf_iova, buf_len, shinfo); }
void tm_pktmbuf_detach(struct rte_mbuf *m) { rte_pktmbuf_detach(m); }
void tm_mbuf_ext_refcnt_set(struct rte_mbuf_ext_shared_info *shinfo, uint16_t value)
{ rte_mbuf_ext_refcnt_set(shinfo, value); }
