//! Test certificates, made per test run with the `openssl` CLI in a temporary directory
//! (ECDSA P-256): two CAs, server leaves (one per SNI name), client leaves with SPIFFE
//! IDs (allowed, intruder, from the other CA, expired), and rustls clients trusting them.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// `openssl req` arguments for a new ECDSA P-256 key, unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

pub struct Pki {
    pub dir: tempfile::TempDir,
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let p = Pki { dir };
        p.ca("ca");
        p.ca("other-ca");
        p.leaf(
            "server",
            "ca",
            "subjectAltName=DNS:localhost,DNS:orders.internal,IP:127.0.0.1",
            30,
        );
        p.leaf("server2", "ca", "subjectAltName=DNS:billing.internal", 30);
        p.leaf(
            "mesh",
            "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,URI:spiffe://example.org/ns/mesh/sa/proxy",
            30,
        );
        p.leaf(
            "server-new",
            "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            30,
        );
        p.leaf(
            "gateway",
            "ca",
            "subjectAltName=URI:spiffe://example.org/ns/trading/sa/gateway",
            30,
        );
        p.leaf(
            "intruder",
            "ca",
            "subjectAltName=URI:spiffe://example.org/ns/other/sa/intruder",
            30,
        );
        p.leaf(
            "foreign",
            "other-ca",
            "subjectAltName=URI:spiffe://example.org/ns/trading/sa/gateway",
            30,
        );
        p.leaf(
            "expired",
            "ca",
            "subjectAltName=URI:spiffe://example.org/ns/trading/sa/gateway",
            -1,
        );
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn ca(&self, name: &str) {
        let (key, pem) = (
            self.s(&format!("{name}.key")),
            self.s(&format!("{name}.pem")),
        );
        let subject = format!("/CN={name}");
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(EC_KEY)
            .args([
                "-days", "30", "-subj", &subject, "-keyout", &key, "-out", &pem,
            ]));
    }

    pub fn leaf(&self, name: &str, ca: &str, ext: &str, days: i32) {
        self.leaf_with_subject(name, ca, &format!("/CN={name}"), ext, days);
    }

    /// As [`Pki::leaf`], with the certificate's subject given (openssl `-subj` form).
    pub fn leaf_with_subject(&self, name: &str, ca: &str, subject: &str, ext: &str, days: i32) {
        let ext_file = self.path(&format!("{name}.ext"));
        std::fs::write(&ext_file, format!("{ext}\n")).unwrap();
        let (key, csr) = (
            self.s(&format!("{name}.key")),
            self.s(&format!("{name}.csr")),
        );
        run(Command::new("openssl")
            .arg("req")
            .args(EC_KEY)
            .args(["-subj", subject, "-keyout", &key, "-out", &csr]));
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &self.s(&format!("{name}.csr")),
            "-CA",
            &self.s(&format!("{ca}.pem")),
            "-CAkey",
            &self.s(&format!("{ca}.key")),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            &ext_file.display().to_string(),
            "-out",
            &self.s(&format!("{name}.pem")),
        ]));
    }

    pub fn certs(&self, name: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn key(&self, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap()
    }

    /// A listener terminating TLS with `server`; `extra` goes inside its `tls:` map.
    pub fn listener_yaml(&self, extra: &str, backend: SocketAddr, cluster_tls: &str) -> String {
        format!(
            "listeners:\n  - name: l\n    address: \"127.0.0.1:0\"\n    cluster: c\n    tls: {{cert: {}, key: {}{extra}}}\nclusters:\n  - {{name: c, endpoints: [\"{backend}\"]{cluster_tls}}}\n",
            self.s("server.pem"),
            self.s("server.key"),
        )
    }

    pub fn mtls_extra(&self, mode: &str) -> String {
        format!(
            ", client_ca: {}, mode: {mode}, allowed_principals: [\"spiffe://example.org/ns/trading/sa/gateway\"]",
            self.s("ca.pem")
        )
    }

    /// A rustls server presenting `name`'s certificate, asking no client certificate.
    pub fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.certs(name), self.key(name))
            .unwrap(),
        )
    }

    /// A rustls client trusting our CA, presenting `client` if given.
    pub fn client(&self, client: Option<&str>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in self.certs("ca") {
            roots.add(c).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        Arc::new(match client {
            Some(n) => b.with_client_auth_cert(self.certs(n), self.key(n)).unwrap(),
            None => b.with_no_client_auth(),
        })
    }
}

/// Handshake through the proxy with a rustls client; returns the stream and session.
pub fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> (TcpStream, rustls::ClientConnection) {
    let mut s = super::connect(addr);
    let mut c =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    while c.is_handshaking() {
        if c.complete_io(&mut s).is_err() {
            break;
        }
    }
    (s, c)
}

/// The alert description a server sent as its first (plaintext) record.
pub fn read_alert(s: &mut TcpStream) -> Option<u8> {
    use std::io::Read;
    let mut rec = [0u8; 7];
    s.read_exact(&mut rec).ok()?;
    (rec[0] == 21).then_some(rec[6])
}

/// What the client's session fails with next: the (encrypted) alert the server sent,
/// read past any NewSessionTicket records before it.
pub fn alert_after(c: &mut rustls::ClientConnection, s: &mut TcpStream) -> String {
    for _ in 0..8 {
        match c.complete_io(s) {
            Err(e) => return e.to_string(),
            Ok((0, 0)) => break,
            Ok(_) => {}
        }
    }
    "no alert".into()
}

/// Handshake, then send the start of a record and end the stream: a truncation.
pub fn truncated_record(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) {
    use std::io::{Read, Write};
    let (mut s, _c) = tls_connect(addr, cfg);
    s.write_all(&[23, 3, 3, 0, 100, 1, 2, 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
}

/// Handshake, then send a record longer than 2^14 + 256 bytes: what the session fails
/// with (the server's alert).
pub fn oversized_record(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> String {
    use std::io::Write;
    let (mut s, mut c) = tls_connect(addr, cfg);
    let mut rec = vec![23, 3, 3, 0x48, 0x01];
    rec.resize(5 + 0x4801, 0);
    let _ = s.write_all(&rec);
    alert_after(&mut c, &mut s)
}
