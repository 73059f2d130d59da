//! Counters for listeners, clusters and endpoints, written by workers without sharing.
//!
//! Each counter block has one cache-line-padded slot per worker. A worker only ever writes
//! its own slot (a relaxed load + store: single writer, so no read-modify-write and no
//! contended line); the control plane sums slots when asked. Blocks outlive route-table
//! swaps: the [`StatsRegistry`] hands the same block to every table that names the same
//! resource, so counts continue across applies. Never allocates on the data path.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::cluster::health::{ClusterHealth, EndpointHealth};

/// A fixed set of counter names.
pub trait CounterSet: Copy {
    const NAMES: &'static [&'static str];
    fn index(self) -> usize;
}

macro_rules! counter_set {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident => $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum $name { $($(#[$fm])* $field,)* }
        impl CounterSet for $name {
            const NAMES: &'static [&'static str] = &[$($text,)*];
            #[inline]
            fn index(self) -> usize { self as usize }
        }
    };
}

counter_set! {
    /// Per listener.
    ListenerCounter {
        CxTotal => "cx_total",
        CxClosed => "cx_closed",
        /// Closed at accept because the listener was at `max_connections`.
        CxOverflow => "cx_overflow",
        /// No cluster or endpoint could take the connection.
        NoUpstream => "no_upstream",
        BytesFromDownstream => "bytes_from_downstream",
        BytesToDownstream => "bytes_to_downstream",
        IdleTimeouts => "idle_timeouts",
        DownstreamResets => "downstream_resets",
        UdpSessionsTotal => "udp_sessions_total",
        UdpSessionsExpired => "udp_sessions_expired",
        DatagramsIn => "datagrams_in",
        DatagramsOut => "datagrams_out",
        Errors => "errors",
        /// TLS handshakes completed with clients.
        TlsHandshakes => "tls_handshakes",
        /// Handshakes that failed for a protocol reason (no shared suite, bad message).
        TlsHandshakeErrors => "tls_handshake_errors",
        /// Client certificates refused (unknown CA, expired, missing).
        TlsCertRejected => "tls_cert_rejected",
        /// Verified clients whose SPIFFE ID is not in `allowed_principals` (reset).
        TlsPrincipalDenied => "tls_principal_denied",
        /// Non-TLS first bytes on a `STRICT` listener.
        TlsPlaintextRejected => "tls_plaintext_rejected",
        /// Plaintext connections a `PERMISSIVE` listener relayed.
        TlsPlaintextAccepted => "tls_plaintext_accepted",
        /// Records that failed after the handshake (bad MAC, oversized, malformed).
        TlsRecordErrors => "tls_record_errors",
        /// Alerts received from clients.
        TlsAlertsReceived => "tls_alerts_received",
        /// Client sockets that ended without `close_notify`.
        TlsTruncated => "tls_truncated",
        /// Client records sealed or opened by the offload engine (not by rustls).
        TlsRecordsOffloaded => "tls_records_offloaded",
        /// Client sides whose keys went to the kernel after the handshake (kTLS).
        TlsKtlsHandovers => "tls_ktls_handovers",
        /// Client sides kept on the offload engine although kTLS was on (why: debug log).
        TlsKtlsFallbacks => "tls_ktls_fallbacks",
        /// Clients that sent a TLS 1.3 KeyUpdate this kernel cannot follow (closed).
        TlsKtlsRekeyUnsupported => "tls_ktls_rekey_unsupported",
        /// HTTP listeners: requests whose head was parsed.
        HttpRqTotal => "http_rq_total",
        /// Responses sent downstream, by class (local ones included).
        HttpRs1xx => "http_rs_1xx",
        HttpRs2xx => "http_rs_2xx",
        HttpRs3xx => "http_rs_3xx",
        HttpRs4xx => "http_rs_4xx",
        HttpRs5xx => "http_rs_5xx",
        /// Requests refused for malformed input (400/413/431).
        HttpBadRequest => "http_bad_request",
        /// No virtual host or route matched (404).
        HttpNoRoute => "http_no_route",
        /// 503: the cluster has no endpoint or none could be connected.
        HttpNoHealthyUpstream => "http_no_healthy_upstream",
        /// 502: the upstream sent a malformed response or closed before one.
        HttpBadGateway => "http_bad_gateway",
        /// 504: the route timeout passed before the response.
        HttpUpstreamTimeout => "http_upstream_timeout",
        /// 408: the request head did not arrive in time.
        HttpHeaderTimeout => "http_header_timeout",
        /// Upstream connections reused for another request (keep-alive).
        HttpUpstreamReuse => "http_upstream_reuse",
        /// Pooled upstream connections found closed by their upstream: by the liveness
        /// check before reuse, or by a reused connection closing before any response
        /// (the idempotent request is then sent again on a fresh connection).
        HttpUpstreamStale => "http_upstream_stale",
        /// `Connection: upgrade` requests turned into tunnels.
        HttpUpgrades => "http_upgrades",
        /// Connections sniffed as not HTTP/1.x and relayed to the TCP fallback cluster.
        SniffedTcp => "sniffed_tcp",
        /// Requests sent upstream again by a route's retry policy.
        HttpRetry => "http_rq_retry",
        /// Shadow copies sent to a mirror cluster (route `request_mirror_policies`).
        HttpMirrored => "http_mirrored",
        /// Shadow requests that got no response head (connect error, reset, timeout,
        /// garbage); the primary never notices.
        HttpMirrorFailed => "http_mirror_failed",
        /// Mirrors not sent: the worker's in-flight shadow cap, a body over the copy
        /// cap, or the shadow cluster's circuit breakers.
        HttpMirrorDropped => "http_mirror_dropped",
        /// Requests refused with 429 by a route's local rate limit.
        HttpRateLimited => "http_rate_limited",
        /// Rate-limit descriptor buckets evicted from a worker's full table (the
        /// evicted key starts again with a full bucket).
        HttpRateLimitEvictions => "http_ratelimit_evictions",
    }
}

counter_set! {
    /// Per cluster and per endpoint (the same names, summed differently).
    UpstreamCounter {
        CxTotal => "cx_total",
        CxClosed => "cx_closed",
        ConnectFail => "connect_fail",
        ConnectTimeout => "connect_timeout",
        BytesSent => "bytes_sent",
        BytesReceived => "bytes_received",
        UpstreamResets => "upstream_resets",
        Errors => "errors",
        /// TLS handshakes completed with upstreams.
        TlsHandshakes => "tls_handshakes",
        /// TLS failures with upstreams (verification, alerts, bad records).
        TlsErrors => "tls_errors",
        /// Upstream records sealed or opened by the offload engine (not by rustls).
        TlsRecordsOffloaded => "tls_records_offloaded",
        /// Upstream sides whose keys went to the kernel after the handshake (kTLS).
        TlsKtlsHandovers => "tls_ktls_handovers",
        /// Upstream sides kept on the offload engine although kTLS was on.
        TlsKtlsFallbacks => "tls_ktls_fallbacks",
        /// Upstreams that sent a TLS 1.3 KeyUpdate this kernel cannot follow (closed).
        TlsKtlsRekeyUnsupported => "tls_ktls_rekey_unsupported",
        /// HTTP requests sent to this cluster, and those finished (active = the
        /// difference, for circuit breaking).
        RqTotal => "rq_total",
        RqDone => "rq_done",
        /// HTTP requests refused by the circuit breakers (503, `x-tickmesh-overloaded`).
        RqOverflow => "rq_overflow",
        /// Retries started on this cluster, and those finished (active = the
        /// difference, for `max_retries` / the retry budget).
        RqRetryTotal => "rq_retry_total",
        RqRetryDone => "rq_retry_done",
        /// Retries not made because `max_retries` or the retry budget was used up (the
        /// failure went to the client as it was).
        RqRetryOverflow => "rq_retry_overflow",
        /// Requests that waited for a connection (`max_connections` reached), and
        /// those that stopped waiting (active = the difference).
        RqPendingTotal => "rq_pending_total",
        RqPendingDone => "rq_pending_done",
        /// Requests refused because `max_pending_requests` were already waiting (503,
        /// counted in `rq_overflow` too).
        RqPendingOverflow => "rq_pending_overflow",
        /// Picks made in panic mode: a priority level with too few usable endpoints
        /// (below `healthy_panic_threshold`) balanced over all of them.
        LbHealthyPanic => "lb_healthy_panic",
        /// Per endpoint: exchanges that ended well or badly as outlier detection counts
        /// them (bad: a 5xx, a connect failure, reset or timeout) — the volumes of
        /// success-rate and failure-percentage detection.
        RqSuccess => "rq_success",
        RqError => "rq_error",
        /// Per endpoint, with `split_external_local_origin_errors` only: exchanges that
        /// reached the endpoint (a response, an L4 connection) and those that failed
        /// locally (connect failure, reset, timeout); `rq_success`/`rq_error` then count
        /// HTTP statuses only.
        RqLocalOriginSuccess => "rq_local_origin_success",
        RqLocalOriginError => "rq_local_origin_error",
    }
}

counter_set! {
    /// Per DPDK port; each worker's slot is that port's queue pair `worker`.
    PortCounter {
        RxPackets => "rx_packets",
        RxBytes => "rx_bytes",
        TxPackets => "tx_packets",
        TxBytes => "tx_bytes",
        /// The TX ring was full: freed, not sent.
        DropTxFull => "drop_tx_full",
        /// Shorter than the headers it claims (Ethernet, IPv4 total length, TCP/UDP).
        DropTruncated => "drop_truncated",
        /// IPv4 version/IHL/total length out of range.
        DropBadIpHeader => "drop_bad_ip_header",
        DropBadChecksum => "drop_bad_checksum",
        /// To a VIP address on a port/protocol no listener serves.
        DropUnknownVip => "drop_unknown_vip",
        /// No MAC address known for the next hop (neighbor table, gateway).
        DropNoNeighbor => "drop_no_neighbor",
        /// Encapsulation needed more headroom than the mbuf had.
        DropNoHeadroom => "drop_no_headroom",
        /// Sent to the exception (kernel) port: non-IPv4 ethertypes.
        ExceptionNonIp => "exception_non_ip",
        /// IPv4 and IPv6 fragments (the balancer does not reassemble).
        ExceptionFragment => "exception_fragment",
        /// IPv6 with extension headers before TCP/UDP (the balancer reads L4 right after
        /// the fixed header).
        ExceptionIpv6ExtHeader => "exception_ipv6_ext_header",
        /// IPv4 not addressed to a VIP nor a reply from a DNAT backend.
        ExceptionOther => "exception_other",
        /// Frames from the exception port sent out of this port.
        FromException => "from_exception",
        ArpReplies => "arp_replies",
        IcmpEchoReplies => "icmp_echo_replies",
        /// Neighbor Advertisements answering Solicitations for our IPv6 addresses.
        NdAdvertisements => "nd_advertisements",
        /// Gauge: live entries in this worker's flow table.
        FlowTableEntries => "flow_table_entries",
        /// A full bucket evicted its least recently seen flow.
        FlowEvictions => "flow_evictions",
    }
}

counter_set! {
    /// Per VIP and per backend of the DPDK packet load balancer.
    PacketCounter {
        /// Client → backend direction.
        Packets => "packets",
        Bytes => "bytes",
        /// Backend → client replies (DNAT only; with IPIP they bypass the balancer).
        ReplyPackets => "reply_packets",
        ReplyBytes => "reply_bytes",
        /// Flows that were assigned a backend (new, or moved after their backend left).
        FlowsNew => "flows_new",
        /// Packets dropped because the VIP's cluster had no usable backend.
        DropNoBackend => "drop_no_backend",
    }
}

counter_set! {
    /// The TLS record offload engine, per worker (each worker has its own engine).
    OffloadCounter {
        /// Backend serving this worker: 0 none yet, 1 software-inline,
        /// 2 software-threaded, 3 ktls, 4 cryptodev (gauge).
        Backend => "backend",
        /// Live crypto sessions (gauge).
        Sessions => "sessions",
        RecordsSealed => "records_sealed",
        RecordsOpened => "records_opened",
        BytesSealed => "bytes_sealed",
        BytesOpened => "bytes_opened",
        /// Jobs that completed with an error (bad record, limit).
        JobsFailed => "jobs_failed",
        /// Submissions refused for back-pressure (ring full, in-flight limit).
        SubmitRefused => "submit_refused",
        /// Jobs submitted and not yet reaped (gauge).
        InFlight => "in_flight",
    }
}

counter_set! {
    /// The worker loops themselves (socket engines), per worker: how much of the wall
    /// time went to turns that did work (`engine::busy`). A spinning worker's CPU time
    /// is always a whole core; this is what it spent working.
    WorkerCounter {
        /// Time in turns that submitted or completed at least one operation (ns).
        BusyNs => "busy_ns",
        /// The worker's clock when `busy_ns` was published (ns since it started):
        /// busy fraction over a window = Δbusy_ns ÷ Δclock_ns.
        ClockNs => "clock_ns",
        /// Turns that did work.
        BusyTurns => "busy_turns",
        /// Completions (io_uring) or readiness events (epoll) handled.
        Events => "events",
    }
}

const SLOT_WORDS: usize = 16; // 128 bytes: two cache lines, so adjacent prefetch can't share.

/// One block of counters: `workers` slots of `K::NAMES.len()` words, each slot padded.
pub struct Counters<K: CounterSet> {
    words: Box<[AtomicU64]>,
    stride: usize,
    workers: usize,
    _k: PhantomData<K>,
}

impl<K: CounterSet> Counters<K> {
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        let stride = K::NAMES.len().div_ceil(SLOT_WORDS) * SLOT_WORDS;
        let words = (0..stride * workers).map(|_| AtomicU64::new(0)).collect();
        Counters {
            words,
            stride,
            workers,
            _k: PhantomData,
        }
    }

    /// Worker slots in this block.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Add `n` to counter `k` in `worker`'s slot. Only that worker may call this with that
    /// index: the load + store is not atomic as a whole.
    #[inline]
    pub fn add(&self, worker: usize, k: K, n: u64) {
        debug_assert!(worker < self.workers, "worker {worker} has no stats slot");
        let w = &self.words[worker * self.stride + k.index()];
        w.store(w.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Set a gauge in `worker`'s slot (same single-writer rule as [`Counters::add`]).
    #[inline]
    pub fn set(&self, worker: usize, k: K, v: u64) {
        self.words[worker * self.stride + k.index()].store(v, Relaxed);
    }

    #[inline]
    pub fn inc(&self, worker: usize, k: K) {
        self.add(worker, k, 1)
    }

    pub fn get(&self, k: K) -> u64 {
        (0..self.workers)
            .map(|w| self.words[w * self.stride + k.index()].load(Relaxed))
            .sum()
    }

    pub fn get_worker(&self, worker: usize, k: usize) -> u64 {
        self.words[worker * self.stride + k].load(Relaxed)
    }

    /// All counters as (name, total, per-worker values).
    pub fn report(&self) -> CounterReport {
        let mut totals = Vec::with_capacity(K::NAMES.len());
        let mut per_worker = Vec::with_capacity(self.workers);
        for w in 0..self.workers {
            per_worker.push(
                (0..K::NAMES.len())
                    .map(|k| self.get_worker(w, k))
                    .collect::<Vec<_>>(),
            );
        }
        for (k, name) in K::NAMES.iter().enumerate() {
            totals.push((name.to_string(), per_worker.iter().map(|v| v[k]).sum()));
        }
        CounterReport {
            totals,
            per_worker,
            names: K::NAMES,
        }
    }
}

impl<K: CounterSet> std::fmt::Debug for Counters<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, name) in K::NAMES.iter().enumerate() {
            m.entry(
                name,
                &(0..self.workers)
                    .map(|w| self.get_worker(w, k))
                    .sum::<u64>(),
            );
        }
        m.finish()
    }
}

/// A point-in-time copy of one counter block.
#[derive(Debug, Clone, Serialize)]
pub struct CounterReport {
    pub totals: Vec<(String, u64)>,
    pub per_worker: Vec<Vec<u64>>,
    #[serde(skip)]
    pub names: &'static [&'static str],
}

impl CounterReport {
    pub fn get(&self, name: &str) -> u64 {
        self.totals
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

pub type ListenerStats = Counters<ListenerCounter>;
pub type UpstreamStats = Counters<UpstreamCounter>;
pub type PortStats = Counters<PortCounter>;
pub type PacketStats = Counters<PacketCounter>;
pub type OffloadStats = Counters<OffloadCounter>;
pub type WorkerStats = Counters<WorkerCounter>;

/// Hands out counter blocks by resource name so that they survive config changes.
/// Control-plane only.
pub struct StatsRegistry {
    workers: usize,
    // Only the control plane touches the registry, never a worker.
    inner: Mutex<RegistryMaps>,
}

#[derive(Default)]
struct RegistryMaps {
    listeners: HashMap<String, Arc<ListenerStats>>,
    clusters: HashMap<String, Arc<UpstreamStats>>,
    endpoints: HashMap<(String, std::net::SocketAddr), Arc<UpstreamStats>>,
    /// Endpoint and cluster health (outlier detection, active checks): kept by name like
    /// the counters so that an ejection survives a table swap.
    endpoint_health: HashMap<(String, std::net::SocketAddr), Arc<EndpointHealth>>,
    cluster_health: HashMap<String, Arc<ClusterHealth>>,
    /// DPDK engine: per port, and per VIP / backend keyed `vip/NAME`, `backend/CLUSTER/ADDR`.
    ports: HashMap<String, Arc<PortStats>>,
    packets: HashMap<String, Arc<PacketStats>>,
    offload: Option<Arc<OffloadStats>>,
    worker_loops: Option<Arc<WorkerStats>>,
}

impl StatsRegistry {
    pub fn new(workers: usize) -> Self {
        StatsRegistry {
            workers: workers.max(1),
            inner: Mutex::default(),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.listeners
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    pub fn cluster(&self, name: &str) -> Arc<UpstreamStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.clusters
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    pub fn endpoint(&self, cluster: &str, addr: std::net::SocketAddr) -> Arc<UpstreamStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.endpoints
            .entry((cluster.to_string(), addr))
            .or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    pub fn endpoint_health(
        &self,
        cluster: &str,
        addr: std::net::SocketAddr,
    ) -> Arc<EndpointHealth> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.endpoint_health
            .entry((cluster.to_string(), addr))
            .or_default()
            .clone()
    }

    pub fn cluster_health(&self, cluster: &str) -> Arc<ClusterHealth> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.cluster_health
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }

    /// DPDK port counters by port name (one slot per worker = per queue pair).
    pub fn port(&self, name: &str) -> Arc<PortStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.ports
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    /// DPDK per-VIP (`vip/NAME`) or per-backend (`backend/CLUSTER/ADDR`) packet counters.
    pub fn packets(&self, key: &str) -> Arc<PacketStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.packets
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    /// The workers' TLS record offload engines (one block for the daemon).
    pub fn offload(&self) -> Arc<OffloadStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.offload
            .get_or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    /// The worker loops' busy time (one block for the daemon).
    pub fn worker_loops(&self) -> Arc<WorkerStats> {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.worker_loops
            .get_or_insert_with(|| Arc::new(Counters::new(self.workers)))
            .clone()
    }

    /// Every DPDK port and packet block, sorted by name: what `stats` shows for the
    /// DPDK engine.
    pub fn packet_reports(&self) -> Vec<(String, CounterReport)> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, CounterReport)> = m
            .ports
            .iter()
            .map(|(k, v)| (format!("port/{k}"), v.report()))
            .chain(m.packets.iter().map(|(k, v)| (k.clone(), v.report())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Forget blocks that no table refers to any more (called after a swap).
    pub fn prune(&self) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.listeners.retain(|_, v| Arc::strong_count(v) > 1);
        m.clusters.retain(|_, v| Arc::strong_count(v) > 1);
        m.endpoints.retain(|_, v| Arc::strong_count(v) > 1);
        m.endpoint_health.retain(|_, v| Arc::strong_count(v) > 1);
        m.cluster_health.retain(|_, v| Arc::strong_count(v) > 1);
        m.ports.retain(|_, v| Arc::strong_count(v) > 1);
        m.packets.retain(|_, v| Arc::strong_count(v) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_summed_and_padded() {
        let c: ListenerStats = Counters::new(3);
        c.inc(0, ListenerCounter::CxTotal);
        c.add(2, ListenerCounter::CxTotal, 4);
        c.add(1, ListenerCounter::BytesFromDownstream, 100);
        assert_eq!(c.get(ListenerCounter::CxTotal), 5);
        assert_eq!(c.report().get("bytes_from_downstream"), 100);
        assert_eq!(c.stride % SLOT_WORDS, 0);
        assert!(c.stride >= ListenerCounter::NAMES.len());
    }

    #[test]
    fn registry_reuses_blocks_by_name() {
        let r = StatsRegistry::new(2);
        let a = r.cluster("x");
        a.inc(1, UpstreamCounter::CxTotal);
        assert_eq!(r.cluster("x").get(UpstreamCounter::CxTotal), 1);
        drop(a);
        r.prune();
        assert_eq!(r.cluster("x").get(UpstreamCounter::CxTotal), 0);
    }
}
