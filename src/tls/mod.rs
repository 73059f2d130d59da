//! TLS in the proxy: what a listener's and a cluster's `tls:` settings compile into
//! ([`ServerTls`], [`ClientTls`]: rustls configs behind `Arc`s, built on the control
//! plane), and the per-connection layer ([`conn`]) that drives rustls between a socket
//! and the relay.
//!
//! Owns certificate loading and checking (PEM parses, the key matches its certificate,
//! errors name the config field), SNI certificate choice, client-certificate
//! verification, SPIFFE identities and the `PeerAuthentication` mode resolution. Never
//! reads a file or builds a config on the data path: workers only clone `Arc`s.
//!
//! rustls does the handshakes; record protection then runs on the worker's
//! `tickmesh-offload` engine (see `conn` and `records`).

pub mod certs;
pub mod conn;
pub mod kernel;
pub mod records;
pub mod xfcc;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::istio::{MtlsMode, PeerAuthentication};
use crate::config::tls::{ClusterTls, ListenerTls, MAX_SESSION_TICKETS};
use crate::config::Problem;

pub use certs::CertInfo;

/// The mTLS mode a listener ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TLS only.
    Strict,
    /// TLS, or plaintext when the first byte is not a TLS handshake record.
    Permissive,
}

/// A listener's compiled TLS termination.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub mode: Mode,
    /// Client certificates are required and verified.
    pub mtls: bool,
    /// SPIFFE IDs allowed; empty = every verified client.
    pub principals: Box<[Box<str>]>,
    /// The certificates served, for expiry monitoring.
    pub certs: Vec<CertInfo>,
    /// Every file read, with its modification time then (hot rotation).
    pub files: Vec<FileStamp>,
    /// The SPIFFE URI SAN of the default certificate, if it has one (the `By=` of
    /// `x-forwarded-client-cert`).
    pub uri: Option<Box<str>>,
}

/// A file and its modification time when read.
pub type FileStamp = (std::path::PathBuf, Option<std::time::SystemTime>);

fn stamp(p: &Path) -> FileStamp {
    (
        p.to_path_buf(),
        std::fs::metadata(p).and_then(|m| m.modified()).ok(),
    )
}

/// The files behind every TLS setting of a table, with the times they were read.
pub fn watched_files(t: &crate::route::RouteTable) -> Vec<FileStamp> {
    let mut out: Vec<FileStamp> = Vec::new();
    for l in t.listeners.iter() {
        if let Some(s) = &l.tls {
            out.extend(s.files.iter().cloned());
        }
    }
    for c in t.clusters.iter() {
        if let Some(s) = &c.tls {
            out.extend(s.files.iter().cloned());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The same files with their modification times now.
pub fn restamp(files: &[FileStamp]) -> Vec<FileStamp> {
    files.iter().map(|(p, _)| stamp(p)).collect()
}

/// Every certificate a table serves or presents: (owner, certificate).
pub fn table_certs(t: &crate::route::RouteTable) -> Vec<(String, CertInfo)> {
    let mut out = Vec::new();
    for l in t.listeners.iter() {
        if let Some(s) = &l.tls {
            out.extend(
                s.certs
                    .iter()
                    .map(|c| (format!("listener {}", l.name), c.clone())),
            );
        }
    }
    for cl in t.clusters.iter() {
        if let Some(s) = &cl.tls {
            out.extend(
                s.certs
                    .iter()
                    .map(|c| (format!("cluster {}", cl.name), c.clone())),
            );
        }
    }
    out
}

/// A cluster's compiled TLS origination.
#[derive(Debug)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
    pub certs: Vec<CertInfo>,
    pub files: Vec<FileStamp>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn problem(path: String, message: String) -> Problem {
    Problem {
        path,
        line: None,
        message,
    }
}

/// The effective mode of listener `name` (`port`, `labels`): its own `mode`, overridden
/// by a mesh-wide `PeerAuthentication` (no selector), overridden by one whose selector
/// matches the labels; a `portLevelMtls` entry for the port beats the resource's mode.
/// `UNSET` inherits. Returns the mode and the resource that set it.
pub fn effective_mode(
    own: Option<MtlsMode>,
    port: u16,
    labels: &std::collections::BTreeMap<String, String>,
    pas: &[PeerAuthentication],
) -> (MtlsMode, Option<String>) {
    let mut mode = own.unwrap_or(MtlsMode::Strict);
    let mut from = None;
    let pick = |pa: &PeerAuthentication| -> Option<MtlsMode> {
        let m = pa
            .spec
            .port_level_mtls
            .get(&port)
            .map(|s| s.mode)
            .filter(|m| *m != MtlsMode::Unset)
            .or(pa.spec.mtls.as_ref().map(|s| s.mode))?;
        (m != MtlsMode::Unset).then_some(m)
    };
    // Mesh-wide first, then workload-specific: the more specific resource wins.
    for specific in [false, true] {
        for pa in pas {
            let sel = pa
                .spec
                .selector
                .as_ref()
                .filter(|s| !s.match_labels.is_empty());
            let applies = match sel {
                None => !specific,
                Some(s) => specific && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)),
            };
            if applies {
                if let Some(m) = pick(pa) {
                    mode = m;
                    from = Some(pa.metadata.name.clone());
                }
            }
        }
    }
    (mode, from)
}

/// Resolve a certificate by the client's SNI among the listener's pairs.
#[derive(Debug)]
struct SniResolver {
    /// (DNS names of the leaf, key); the first is the default.
    pairs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    // RFC 6125 §6.4.3: a wildcard covers exactly one left-most label.
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((_, rest))) => suffix.eq_ignore_ascii_case(rest),
        _ => false,
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            for (names, key) in &self.pairs {
                if names.iter().any(|p| name_matches(p, sni)) {
                    return Some(key.clone());
                }
            }
        }
        self.pairs.first().map(|(_, k)| k.clone())
    }
}

fn load_pair(
    cert: &Path,
    key: &Path,
    at: &str,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertInfo), Problem> {
    let chain = certs::load_certs(cert).map_err(|e| problem(format!("{at}.cert"), e))?;
    let der = certs::load_key(key).map_err(|e| problem(format!("{at}.key"), e))?;
    let info = CertInfo::parse(cert, &chain[0]).map_err(|e| problem(format!("{at}.cert"), e))?;
    let ck = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        problem(
            format!("{at}.key"),
            format!(
                "{} does not match certificate {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok((Arc::new(ck), info))
}

fn roots(path: &Path, at: String) -> Result<Arc<RootCertStore>, Problem> {
    let ders = certs::load_certs(path).map_err(|e| problem(at.clone(), e))?;
    let mut store = RootCertStore::empty();
    for d in ders {
        store.add(d).map_err(|e| {
            problem(
                at.clone(),
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(Arc::new(store))
}

/// A principal as `allowed_principals` takes it: a SPIFFE ID.
pub fn check_spiffe(p: &str) -> Result<(), String> {
    if !p.starts_with("spiffe://") || p.len() <= "spiffe://".len() {
        return Err(format!(
            "`{p}` is not a SPIFFE ID (spiffe://trust-domain/path)"
        ));
    }
    Ok(())
}

/// Compile a listener's `tls:` with its effective mode. `None` for `DISABLE`.
/// `at` is the field path of the `tls` block (`listeners[0].tls`).
pub fn build_server(
    t: &ListenerTls,
    mode: MtlsMode,
    at: &str,
) -> Result<Option<Arc<ServerTls>>, Vec<Problem>> {
    let mode = match mode {
        MtlsMode::Disable => return Ok(None),
        MtlsMode::Permissive => Mode::Permissive,
        MtlsMode::Strict | MtlsMode::Unset => Mode::Strict,
    };
    let provider = provider();
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    let mut infos = Vec::new();
    let mut uri = None;
    let mut files = vec![stamp(&t.cert), stamp(&t.key)];
    for p in &t.sni_certs {
        files.push(stamp(&p.cert));
        files.push(stamp(&p.key));
    }
    if let Some(ca) = &t.client_ca {
        files.push(stamp(ca));
    }
    let all = std::iter::once((t.cert.as_path(), t.key.as_path(), at.to_string())).chain(
        t.sni_certs.iter().enumerate().map(|(i, p)| {
            (
                p.cert.as_path(),
                p.key.as_path(),
                format!("{at}.sni_certs[{i}]"),
            )
        }),
    );
    for (cert, key, path) in all {
        match load_pair(cert, key, &path, &provider) {
            Ok((ck, info)) => {
                if pairs.is_empty() {
                    uri = ck
                        .cert
                        .first()
                        .and_then(|leaf| certs::spiffe_id(leaf.as_ref()))
                        .map(String::into_boxed_str);
                }
                pairs.push((info.dns_names.clone(), ck));
                infos.push(info);
            }
            Err(p) => problems.push(p),
        }
    }
    for (i, p) in t.allowed_principals.iter().enumerate() {
        if let Err(e) = check_spiffe(p) {
            problems.push(problem(format!("{at}.allowed_principals[{i}]"), e));
        }
    }
    if let Some(n) = t.session_tickets.filter(|n| *n > MAX_SESSION_TICKETS) {
        problems.push(problem(
            format!("{at}.session_tickets"),
            format!("{n} tickets per handshake is more than the {MAX_SESSION_TICKETS} allowed (0 turns tickets off; the default is 2)"),
        ));
    }
    if !t.allowed_principals.is_empty() && t.client_ca.is_none() {
        problems.push(problem(
            format!("{at}.allowed_principals"),
            "principals come from client certificates: set client_ca too".into(),
        ));
    }
    let verifier = match &t.client_ca {
        Some(ca) => match roots(ca, format!("{at}.client_ca")) {
            Ok(r) => match WebPkiClientVerifier::builder_with_provider(r, provider.clone()).build()
            {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(problem(format!("{at}.client_ca"), e.to_string()));
                    None
                }
            },
            Err(p) => {
                problems.push(p);
                None
            }
        },
        None => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| vec![problem(at.to_string(), e.to_string())])?;
    let mtls = verifier.is_some();
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { pairs }));
    // The traffic secrets move to the offload engine after the handshake.
    config.enable_secret_extraction = true;
    match t.session_tickets {
        // Off: rustls's default ticketer issues none (TLS 1.2), and no TLS 1.3 ticket is
        // sent; the session-ID cache (TLS 1.2) still resumes, as Envoy's option leaves it.
        Some(0) => config.send_tls13_tickets = 0,
        n => {
            config.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| vec![problem(at.to_string(), format!("session tickets: {e}"))])?;
            if let Some(n) = n {
                config.send_tls13_tickets = n as usize;
            }
        }
    }
    Ok(Some(Arc::new(ServerTls {
        config: Arc::new(config),
        mode,
        mtls,
        principals: t
            .allowed_principals
            .iter()
            .map(|p| p.as_str().into())
            .collect(),
        certs: infos,
        files,
        uri,
    })))
}

/// The one client certificate a cluster presents.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Compile a cluster's `tls:`. `at` is the field path of the block.
pub fn build_client(t: &ClusterTls, at: &str) -> Result<Arc<ClientTls>, Vec<Problem>> {
    let provider = provider();
    let mut problems = Vec::new();
    let name = match ServerName::try_from(t.sni.clone()) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push(problem(
                format!("{at}.sni"),
                format!("`{}` is not a DNS name or IP address: {e}", t.sni),
            ));
            None
        }
    };
    let store = match roots(&t.ca, format!("{at}.ca")) {
        Ok(r) => Some(r),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let mut infos = Vec::new();
    let client_key = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => match load_pair(c, k, at, &provider) {
            Ok((ck, info)) => {
                infos.push(info);
                Some(ck)
            }
            Err(p) => {
                problems.push(p);
                None
            }
        },
        (None, None) => None,
        (Some(_), None) => {
            problems.push(problem(
                format!("{at}.key"),
                "a client cert needs its key".into(),
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(problem(
                format!("{at}.cert"),
                "a client key needs its cert".into(),
            ));
            None
        }
    };
    let (Some(name), Some(store)) = (name, store) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| vec![problem(at.to_string(), e.to_string())])?
        .with_root_certificates(store);
    let mut config = match client_key {
        Some(ck) => builder.with_client_cert_resolver(Arc::new(ClientCert(ck))),
        None => builder.with_no_client_auth(),
    };
    config.enable_secret_extraction = true;
    let mut files = vec![stamp(&t.ca)];
    files.extend(t.cert.iter().chain(t.key.iter()).map(|p| stamp(p)));
    Ok(Arc::new(ClientTls {
        config: Arc::new(config),
        name,
        certs: infos,
        files,
    }))
}

#[cfg(test)]
pub(crate) mod tests;
