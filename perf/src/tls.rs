//! TLS for the `tls-echo` workload: the test certificates (made per run with the
//! `openssl` CLI), the generator's rustls client (ring provider, pinned to one suite so
//! every target negotiates the same cipher), the blocking connect + handshake, and the
//! non-blocking record pump the generator uses once the handshake is done.
//!
//! Handshakes happen before any clock starts: the generator measures record round trips
//! only. Never trusts the peer: a handshake or record error is an `io::Error` naming it,
//! which the generator counts like a lost connection. After the handshake the pump
//! allocates nothing of its own (rustls keeps its buffers per connection).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConfig};

/// The name the server certificate carries and the generator sends (SNI) and verifies.
pub const SERVER_NAME: &str = "localhost";

/// The one suite the generator offers: every target's TLS stack negotiates the same
/// cipher (AES-128-GCM has AES-NI + CLMUL paths in ring and OpenSSL alike).
pub const SUITE: CipherSuite = CipherSuite::TLS13_AES_128_GCM_SHA256;

/// How the bench's TLS is set up, in words, for the report.
pub fn describe() -> String {
    "TLS 1.3, TLS_AES_128_GCM_SHA256 (the generator offers only this suite), X25519, ECDSA P-256 leaf signed by a per-run CA; handshake before the clock starts".into()
}

/// PEM files made for one bench run.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    /// Leaf certificate (SAN DNS:localhost, IP:127.0.0.1, IP:::1).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Leaf certificate followed by its key, for HAProxy's `crt`.
    pub combined: PathBuf,
}

impl Certs {
    /// Make a CA and a leaf it signs in `dir` with the `openssl` CLI.
    pub fn generate(dir: &Path) -> anyhow::Result<Certs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = |n: &str| dir.join(n);
        let s = |n: &str| p(n).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        std::fs::write(
            p("leaf.ext"),
            format!("subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1,IP:::1\n"),
        )?;
        let (ca_key, ca, csr, key, cert) = (
            s("ca.key"),
            s("ca.pem"),
            s("leaf.csr"),
            s("leaf.key"),
            s("leaf.pem"),
        );
        let ext = s("leaf.ext");
        let steps: [Vec<&str>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=tickmesh-bench-ca"],
            ]
            .concat()
            .into_iter()
            .chain(["-keyout", &ca_key, "-out", &ca])
            .collect(),
            [&["req"][..], &ec, &["-subj", "/CN=localhost"]]
                .concat()
                .into_iter()
                .chain(["-keyout", &key, "-out", &csr])
                .collect(),
            vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        ];
        for args in steps {
            let out = Command::new("openssl").args(&args).output().map_err(|e| {
                anyhow::anyhow!(
                    "tls-echo makes its test certificates with the openssl CLI, which did not run ({e}): run scripts/setup (package openssl)"
                )
            })?;
            if !out.status.success() {
                bail!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let combined = p("leaf-with-key.pem");
        let mut both = std::fs::read(&cert)?;
        both.extend(std::fs::read(&key)?);
        std::fs::write(&combined, both)?;
        Ok(Certs {
            ca: p("ca.pem"),
            cert: p("leaf.pem"),
            key: p("leaf.key"),
            combined,
        })
    }

    /// The generator's client: trusts only the run's CA, offers only [`SUITE`].
    pub fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca)
            .with_context(|| format!("reading {}", self.ca.display()))?
        {
            roots.add(c.with_context(|| format!("parsing {}", self.ca.display()))?)?;
        }
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == SUITE);
        let cfg = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }

    /// The `tls-handshake` generator's client: [`SUITE`] and X25519 only, no resumption
    /// (it keeps no tickets, so every connection is a full handshake), and it does not
    /// verify the server's certificate chain or `CertificateVerify` signature. Verifying
    /// (two ECDSA P-256 verifications and a chain walk per handshake) would make the
    /// client cost more than the server it measures, and the generator — on the other
    /// CPU with the backend — the bottleneck. The server's work is unchanged: key share,
    /// signature, Finished. The readiness probe still uses [`Certs::client_config`],
    /// which verifies, so a target serving the wrong certificate is still caught.
    pub fn handshake_client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|s| s.suite() == SUITE);
        provider
            .kx_groups
            .retain(|g| g.name() == rustls::NamedGroup::X25519);
        let schemes = provider
            .signature_verification_algorithms
            .supported_schemes();
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(schemes)))
            .with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }

    /// The TLS echo backend's server (rustls, ring, default suites).
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("reading {}", self.cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("reading the key {}", self.key.display()))?;
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the bench's certificate and key do not match")?;
        Ok(Arc::new(cfg))
    }
}

/// Accepts any server certificate and signature: see [`Certs::handshake_client_config`].
#[derive(Debug)]
struct NoVerify(Vec<rustls::SignatureScheme>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}

/// A client TLS connection on a TCP stream, handshake done.
pub struct TlsSock {
    pub stream: TcpStream,
    pub conn: ClientConnection,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Connect and complete the handshake, blocking (bounded by `timeout` per I/O step);
/// the stream is left non-blocking when `nonblocking`.
pub fn connect(
    target: SocketAddr,
    cfg: &Arc<ClientConfig>,
    timeout: Duration,
    nonblocking: bool,
) -> io::Result<TlsSock> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let name = ServerName::try_from(SERVER_NAME).expect("constant DNS name is valid");
    let mut conn = ClientConnection::new(cfg.clone(), name).map_err(tls_err)?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut stream) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "TLS handshake: the peer closed the connection",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("TLS handshake not done within {timeout:?}"),
                ))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("TLS handshake: {e}"))),
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut stream)?;
    }
    if nonblocking {
        stream.set_nonblocking(true)?;
    } else {
        stream.set_read_timeout(Some(timeout))?;
    }
    Ok(TlsSock { stream, conn })
}

impl TlsSock {
    /// Encrypt `buf` (all of it: rustls buffers plaintext) and push records to the
    /// socket. `WouldBlock` only when nothing at all moved; records the socket did not
    /// take stay queued ([`TlsSock::pending`]) for the next call.
    pub fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = if buf.is_empty() {
            0
        } else {
            self.conn.writer().write(buf)?
        };
        let flushed = self.flush()?;
        if n == 0 && !flushed {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Records encrypted but not yet taken by the socket.
    pub fn pending(&self) -> bool {
        self.conn.wants_write()
    }

    /// Write queued records; returns whether any bytes moved.
    fn flush(&mut self) -> io::Result<bool> {
        let mut moved = false;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.stream) {
                Ok(0) => break,
                Ok(_) => moved = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    /// Read plaintext like `Read::read` on a non-blocking socket: `Ok(0)` at the end of
    /// the stream (close_notify or TCP close), `WouldBlock` when nothing is there.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.stream) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    self.conn.process_new_packets().map_err(tls_err)?;
                    // A KeyUpdate request or an alert may want an answer.
                    self.flush()?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_load_into_client_and_server_configs() {
        if crate::sys::find_binary("openssl").is_none() {
            eprintln!("SKIP: no openssl CLI to make certificates");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(dir.path()).unwrap();
        let client = certs.client_config().unwrap();
        assert_eq!(client.crypto_provider().cipher_suites.len(), 1);
        certs.server_config().unwrap();
        let combined = std::fs::read_to_string(&certs.combined).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let c = Certs {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            combined: "/nonexistent/x.pem".into(),
        };
        let e = c.client_config().unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"), "{e:#}");
        let e = c.server_config().unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/c.pem"), "{e:#}");
    }
}
