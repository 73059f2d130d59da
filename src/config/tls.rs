//! TLS settings as the operator writes them: a listener's `tls:` (terminate, mTLS mode,
//! allowed client principals), a cluster's `tls:` (originate to upstream) and the
//! daemon-wide `offload:` choice.
//!
//! Plain data: files are only named here. `tls::build_*` (called by `route::compile`)
//! reads and checks them, so a missing file or a key that does not match its
//! certificate is an apply-time error naming the field, never a data-path surprise.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::istio::MtlsMode;
use super::model::opt_duration;

/// Terminate TLS on a listener.
///
/// `mode` is the mTLS mode, as Istio's `PeerAuthentication` sets it:
/// `STRICT` (default) accepts TLS only; `PERMISSIVE` also accepts plaintext (sniffed from
/// the first byte); `DISABLE` serves plaintext only. With `client_ca`, TLS clients must
/// present a certificate that chains to it (mTLS); without it, server-side TLS only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `cert`.
    pub key: PathBuf,
    /// More certificate/key pairs; the client's SNI picks among all pairs by their DNS
    /// names, the first pair (`cert`/`key`) serves when none matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_certs: Vec<CertPair>,
    /// PEM bundle of CAs that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
    /// SPIFFE IDs (`spiffe://trust-domain/ns/…/sa/…`) allowed to connect; empty allows
    /// every verified client. A client not listed is reset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_principals: Vec<String>,
    /// TLS 1.3 session tickets sent after each full handshake (default 2, at most
    /// [`MAX_SESSION_TICKETS`]); `0` turns stateless resumption off (TLS 1.2 tickets too),
    /// like Envoy's `disable_stateless_session_resumption` or HAProxy's `no-tls-tickets`.
    /// TLS 1.2 session-ID resumption (the server's cache) stays, as in Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_tickets: Option<u32>,
}

/// Most tickets a listener may send per handshake (each is a message to the client and
/// an encryption on the handshake path; OpenSSL and rustls send 2 by default).
pub const MAX_SESSION_TICKETS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Originate TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM bundle the upstream's certificate must chain to.
    pub ca: PathBuf,
    /// Server name sent (SNI) and verified against the upstream certificate.
    pub sni: String,
    /// Client certificate and key, for upstreams that require mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Daemon-wide TLS record crypto offload and certificate monitoring.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offload {
    #[serde(default)]
    pub backend: OffloadBackend,
    /// The DPDK crypto driver the `cryptodev` backend instantiates when the process's EAL
    /// probed no crypto device (default: crypto_aesni_gcm, else crypto_openssl; the
    /// `TICKMESH_CRYPTODEV` environment variable when unset here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cryptodev_driver: Option<CryptodevDriver>,
    /// Warn (log and `tickmesh stats`) when a certificate expires within this long
    /// (default 7 days).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiry_warning: Option<Duration>,
}

/// Virtual crypto devices the `cryptodev` offload backend can create (DPDK PMD names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CryptodevDriver {
    #[serde(rename = "crypto_aesni_gcm")]
    AesniGcm,
    #[serde(rename = "crypto_openssl")]
    Openssl,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadBackend {
    #[default]
    Auto,
    /// `ring` in the worker's poll loop.
    Software,
    /// `ring` on a dedicated crypto thread per worker (wants a spare core).
    #[serde(rename = "software-threaded")]
    SoftwareThreaded,
    Cryptodev,
    Ktls,
}

/// What an `http` listener does with a request's `x-forwarded-client-cert` header
/// (Envoy's `forward_client_cert_details`, same names). "mTLS" means the client presented
/// a certificate the listener verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCertDetails {
    /// Remove the header; send none.
    Sanitize,
    /// Pass the client's header on when the connection is mTLS (else remove it).
    ForwardOnly,
    /// mTLS: pass the client's header on with this proxy's element appended.
    AppendForward,
    /// mTLS: replace the client's header with this proxy's element.
    SanitizeSet,
    /// Pass the client's header on whatever the connection.
    AlwaysForwardOnly,
}

/// Which client-certificate fields this proxy's XFCC element carries besides `By` and
/// `Hash` (Envoy's `set_current_client_cert_details`, same names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertDetails {
    /// `Subject="…"`: the subject, RFC 2253 order and escaping.
    #[serde(default)]
    pub subject: bool,
    /// `Cert=`: the leaf certificate, URL-encoded PEM.
    #[serde(default)]
    pub cert: bool,
    /// `Chain=`: every certificate the client presented, leaf first, URL-encoded PEM.
    #[serde(default)]
    pub chain: bool,
    /// `DNS=`: one pair per DNS SAN.
    #[serde(default)]
    pub dns: bool,
    /// `URI=`: one pair per URI SAN.
    #[serde(default)]
    pub uri: bool,
}
