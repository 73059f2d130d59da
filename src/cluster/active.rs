//! Active health checks (HTTP and TCP), run by the control plane.
//!
//! Owns the probing: one tokio task per (cluster, endpoint) with a check configured,
//! a real HTTP/1.1 `GET` over TCP every `interval` — or, for a TCP check, a connect —
//! and the endpoint's `CHECK_FAILED` flag in its [`super::health::EndpointHealth`].
//! When the cluster originates TLS both go over TLS with the cluster's own `ClientTls`
//! (its CA, SNI name and client certificate): the `GET` is sent inside it, and a TCP
//! check passes only once the handshake completed. Never runs on a worker; workers only
//! see the flag through `ClusterEntry::pick`.

use std::time::Duration;

/// A cluster's compiled `health_checks` entry (Envoy's shape, HTTP checks only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPolicy {
    pub timeout: Duration,
    pub interval: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub path: String,
    /// `Host` header of the check (default: the cluster's name).
    pub host: String,
    /// Half-open ranges `[start, end)` of statuses that pass (default: 200 only).
    pub expected: Vec<(u16, u16)>,
    /// A TCP check (Envoy `tcp_health_check` without payloads): a connection made within
    /// the timeout passes; `path`, `host` and `expected` are unused.
    pub tcp: bool,
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::health::{ClusterHealth, EndpointHealth, CHECK_FAILED, EJECTED};
use crate::config::HealthCheck;

/// Largest response head read from a checked endpoint; only its status line matters.
const MAX_CHECK_RESPONSE: usize = 4096;

impl CheckPolicy {
    pub fn from_config(h: &HealthCheck, cluster: &str) -> CheckPolicy {
        let none = crate::config::HttpHealthCheck {
            path: "/".into(),
            host: None,
            expected_statuses: Vec::new(),
        };
        let http = h.http_health_check.as_ref().unwrap_or(&none);
        CheckPolicy {
            tcp: h.tcp_health_check.is_some(),
            // validate() requires both; the defaults only guard a config built in code.
            timeout: h.timeout.unwrap_or(Duration::from_secs(1)),
            interval: h.interval.unwrap_or(Duration::from_secs(5)),
            unhealthy_threshold: h.unhealthy_threshold.max(1),
            healthy_threshold: h.healthy_threshold.max(1),
            path: http.path.clone(),
            host: http.host.clone().unwrap_or_else(|| cluster.to_string()),
            expected: if http.expected_statuses.is_empty() {
                vec![(200, 201)]
            } else {
                http.expected_statuses
                    .iter()
                    .map(|r| (r.start, r.end))
                    .collect()
            },
        }
    }

    fn passes(&self, status: u16) -> bool {
        self.expected.iter().any(|&(s, e)| (s..e).contains(&status))
    }
}

struct Probe {
    policy: Arc<CheckPolicy>,
    tls: Option<Arc<crate::tls::ClientTls>>,
    health: Arc<EndpointHealth>,
    cluster: Arc<ClusterHealth>,
    task: tokio::task::JoinHandle<()>,
}

/// The running probes, one per (cluster, endpoint) of the current table that has a
/// check. Owned by the control plane; [`Checker::reconcile`] runs on its tokio thread.
pub struct Checker {
    probes: HashMap<(Arc<str>, SocketAddr), Probe>,
    /// The table last reconciled with (weak: its listeners and sockets are not kept
    /// alive; its allocation is, so its address is not reused by a later table).
    seen: std::sync::Weak<crate::route::RouteTable>,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            probes: HashMap::new(),
            seen: std::sync::Weak::new(),
        }
    }
}

impl Checker {
    /// Start probes for endpoints that need one, stop those whose endpoint or check is
    /// gone (their `CHECK_FAILED` flag is cleared: nothing checks them any more).
    /// Needs a tokio runtime; without one it does nothing.
    pub fn reconcile(&mut self, table: &Arc<crate::route::RouteTable>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if std::ptr::eq(self.seen.as_ptr(), Arc::as_ptr(table)) {
            return;
        }
        self.seen = Arc::downgrade(table);
        let mut keep = std::collections::HashSet::new();
        for c in table.clusters.iter() {
            let Some(policy) = &c.health_check else {
                continue;
            };
            for e in c.endpoints.iter() {
                let k = (c.name.clone(), e.address);
                keep.insert(k.clone());
                if let Some(p) = self.probes.get(&k) {
                    let same_tls = match (&p.tls, &c.tls) {
                        (None, None) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    };
                    if *p.policy == **policy && Arc::ptr_eq(&p.health, &e.health) && same_tls {
                        continue;
                    }
                }
                if let Some(old) = self.probes.remove(&k) {
                    old.task.abort();
                }
                let (policy, health, cluster) =
                    (policy.clone(), e.health.clone(), c.health.clone());
                health.reset_streak();
                let task = rt.spawn(probe_loop(
                    policy.clone(),
                    c.tls.clone(),
                    e.address,
                    health.clone(),
                    cluster.clone(),
                ));
                self.probes.insert(
                    k,
                    Probe {
                        policy,
                        tls: c.tls.clone(),
                        health,
                        cluster,
                        task,
                    },
                );
            }
        }
        self.probes.retain(|k, p| {
            if keep.contains(k) {
                return true;
            }
            p.task.abort();
            p.health.set_flag(&p.cluster, CHECK_FAILED, false);
            false
        });
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for p in self.probes.values() {
            p.task.abort();
        }
    }
}

async fn probe_loop(
    policy: Arc<CheckPolicy>,
    tls: Option<Arc<crate::tls::ClientTls>>,
    addr: SocketAddr,
    health: Arc<EndpointHealth>,
    cluster: Arc<ClusterHealth>,
) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match &tls {
            // A TCP check of a cluster that originates TLS connects as the data path
            // does: the handshake with the cluster's CA, SNI name and client
            // certificate must complete (Envoy runs its TCP check over the cluster's
            // transport socket). Blocking rustls on the blocking pool, as below.
            Some(tls) if policy.tcp => {
                let (p, tls) = (policy.clone(), tls.clone());
                let job = tokio::task::spawn_blocking(move || handshake_tls(&p, addr, &tls));
                tokio::time::timeout(policy.timeout, async {
                    job.await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                })
                .await
            }
            // Connected: a pass (status 0 stands for "no HTTP status").
            _ if policy.tcp => {
                tokio::time::timeout(policy.timeout, async {
                    tokio::net::TcpStream::connect(addr).await.map(|_| 0)
                })
                .await
            }
            None => tokio::time::timeout(policy.timeout, check_once(&policy, addr)).await,
            Some(tls) => {
                // rustls is driven by blocking I/O on the blocking pool, every socket
                // operation bounded by the check's timeout (no async TLS crate needed).
                let (p, tls) = (policy.clone(), tls.clone());
                let job = tokio::task::spawn_blocking(move || check_once_tls(&p, addr, &tls));
                tokio::time::timeout(policy.timeout, async {
                    job.await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                })
                .await
            }
        };
        let ok = match result {
            Ok(Ok(_)) if policy.tcp => true,
            Ok(Ok(status)) => policy.passes(status),
            Ok(Err(e)) => {
                tracing::debug!("health check of {addr} failed: {e}");
                false
            }
            Err(_) => false,
        };
        let streak = health.check_result(ok);
        let failed = health.flags() & CHECK_FAILED != 0;
        let change = if failed {
            ok && streak >= policy.healthy_threshold
        } else {
            !ok && streak >= policy.unhealthy_threshold
        };
        // Envoy's `successful_active_health_check_uneject_host`: a pass ends an
        // outlier ejection — at once, or when a failing check turns healthy. Same
        // (current-thread) runtime as the health tick: no race on the flags.
        if ok && (!failed || change) && health.flags() & EJECTED != 0 && cluster.uneject_on_check()
        {
            health.uneject(&cluster);
            cluster
                .unejections_by_check
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("health check of {addr} passed: outlier ejection ended");
        }
        if change {
            if failed {
                // Healthy again: a slow-start cluster ramps it up anew (Envoy's
                // slow start re-entered on an unhealthy → healthy transition).
                health.restart_slow_start(super::health::now_ms());
            }
            health.set_flag(&cluster, CHECK_FAILED, !failed);
            health.reset_streak();
            tracing::info!(
                "health check of {addr}: {}",
                if failed { "healthy again" } else { "unhealthy" }
            );
        }
    }
}

impl CheckPolicy {
    /// The check's request.
    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: tickmesh-health-check\r\nconnection: close\r\n\r\n",
            self.path, self.host
        )
    }
}

/// A fresh TLS connection made with the cluster's client settings, handshake
/// completed (the certificate verified against its CA and SNI name), then closed with
/// `close_notify`; 0 ("no HTTP status") on success. Blocking; each socket operation
/// is bounded by the timeout.
fn handshake_tls(
    p: &CheckPolicy,
    addr: SocketAddr,
    tls: &crate::tls::ClientTls,
) -> std::io::Result<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, p.timeout)?;
    s.set_read_timeout(Some(p.timeout))?;
    s.set_write_timeout(Some(p.timeout))?;
    let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(std::io::Error::other)?;
    // Each round trip either makes progress or fails (an EOF mid-handshake is an
    // error from rustls), so the loop is bounded by the handshake's few flights.
    while conn.is_handshaking() {
        conn.complete_io(&mut s)?;
    }
    conn.send_close_notify();
    // The peer may already have gone: the check passed with the handshake.
    let _ = conn.complete_io(&mut s);
    Ok(0)
}

/// One `GET` over a fresh TLS connection made with the cluster's client settings (the
/// certificate is verified against its CA and SNI name as the data path does); the
/// response's status code. Blocking; each socket operation is bounded by the timeout.
fn check_once_tls(
    p: &CheckPolicy,
    addr: SocketAddr,
    tls: &crate::tls::ClientTls,
) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let s = std::net::TcpStream::connect_timeout(&addr, p.timeout)?;
    s.set_read_timeout(Some(p.timeout))?;
    s.set_write_timeout(Some(p.timeout))?;
    let conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(std::io::Error::other)?;
    let mut t = rustls::StreamOwned::new(conn, s);
    t.write_all(p.request().as_bytes())?;
    t.flush()?;
    let mut buf = vec![0u8; MAX_CHECK_RESPONSE];
    let mut len = 0;
    loop {
        let n = t.read(&mut buf[len..])?;
        len += n;
        if let Some(status) = status_of(&buf[..len]) {
            return Ok(status);
        }
        if n == 0 || len == buf.len() {
            return Err(no_status());
        }
    }
}

fn no_status() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line")
}

/// One `GET` over a fresh connection; the response's status code.
async fn check_once(p: &CheckPolicy, addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(p.request().as_bytes()).await?;
    let mut buf = vec![0u8; MAX_CHECK_RESPONSE];
    let mut len = 0;
    loop {
        let n = s.read(&mut buf[len..]).await?;
        len += n;
        if let Some(status) = status_of(&buf[..len]) {
            return Ok(status);
        }
        if n == 0 || len == buf.len() {
            return Err(no_status());
        }
    }
}

/// The status of a response whose status line is complete (`HTTP/1.x NNN ...\r\n`).
fn status_of(b: &[u8]) -> Option<u16> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[..end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return Some(0);
    }
    let code = parts.next()?;
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 => Some(c),
        _ => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 X\r\nfoo"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 200"), None, "incomplete");
        assert_eq!(status_of(b"SSH-2.0-x\r\n"), Some(0), "not HTTP fails");
        assert_eq!(status_of(b"HTTP/1.1 2000 X\r\n"), Some(0));
    }

    #[test]
    fn expected_statuses_default_to_200_only() {
        let h: HealthCheck = serde_yaml::from_str(
            "{timeout: 1s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 1, http_health_check: {path: /h}}",
        )
        .unwrap();
        let p = CheckPolicy::from_config(&h, "svc");
        assert!(p.passes(200) && !p.passes(204) && !p.passes(503));
        assert_eq!(p.host, "svc");
    }
}
