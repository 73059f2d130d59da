//! Reading PEM files and looking inside certificates: the leaf's names, validity and
//! SPIFFE ID. Control plane only (allocates, reads files).

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What stats and logs need to know about a loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub path: PathBuf,
    pub subject: String,
    pub dns_names: Vec<String>,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// File modification time when loaded, for change detection.
    pub mtime: Option<std::time::SystemTime>,
}

impl CertInfo {
    pub fn parse(path: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    dns_names.push(d.to_string());
                }
            }
        }
        Ok(CertInfo {
            path: path.to_path_buf(),
            subject: cert.subject().to_string(),
            dns_names,
            not_after: cert.validity().not_after.timestamp(),
            mtime: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        })
    }

    /// Seconds until expiry (negative once expired).
    pub fn seconds_remaining(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after - now
    }
}

/// Every certificate in a PEM file, in order. Errors name the file and say what is wrong.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PRIVATE KEY block in the file", path.display())
        }
        e => format!("{}: bad PEM: {e}", path.display()),
    })
}

/// SHA-256 of `der`, lowercase hex (ring's digest, through the rustls provider's hash).
pub fn sha256_hex(der: &[u8]) -> String {
    use std::fmt::Write;
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut out = String::with_capacity(64);
    if let Some(s) = suite.tls13() {
        for b in s.common.hash_provider.hash(der).as_ref() {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

/// The SPIFFE ID in a certificate's URI SANs, if any (`spiffe://…`).
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
        _ => None,
    })
}
