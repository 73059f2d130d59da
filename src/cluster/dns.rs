//! The last good DNS answers for `strict_dns` clusters, kept on the control plane.
//!
//! `route::compile` reads answers from here and never resolves by itself, so an apply
//! never waits on a resolver. A refresh that fails keeps the previous answer (Envoy's
//! behaviour for STRICT_DNS). Workers never touch this module.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};

type Answers = HashMap<(String, u16), Vec<SocketAddr>>;

fn cache() -> &'static Mutex<Answers> {
    static CACHE: OnceLock<Mutex<Answers>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The last good answer for `host:port` (empty before the first successful lookup).
pub fn cached(host: &str, port: u16) -> Vec<SocketAddr> {
    let c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.get(&(host.to_ascii_lowercase(), port))
        .cloned()
        .unwrap_or_default()
}

/// Resolve `host:port` with the system resolver (blocking: call from a control-plane
/// thread) and remember the answer. On failure the previous answer stays.
/// Returns whether the answer changed.
pub fn refresh(host: &str, port: u16) -> std::io::Result<bool> {
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs.sort();
    addrs.dedup();
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    let key = (host.to_ascii_lowercase(), port);
    if addrs.is_empty() || c.get(&key) == Some(&addrs) {
        return Ok(false);
    }
    c.insert(key, addrs);
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn localhost_resolves_and_failures_keep_the_last_answer() {
        assert!(super::refresh("localhost", 80).is_ok());
        assert!(super::cached("LOCALHOST", 80)
            .iter()
            .any(|a| a.ip().is_loopback()));
        assert!(super::refresh("no-such-host.invalid", 80).is_err());
        assert!(super::cached("no-such-host.invalid", 80).is_empty());
    }
}
