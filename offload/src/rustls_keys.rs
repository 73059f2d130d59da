//! The rustls seam (feature `rustls`): turn what rustls hands over after the handshake
//! into crypto sessions.
//!
//! rustls's secret extraction (`dangerous_extract_secrets`, or
//! `dangerous_into_kernel_connection` in the unbuffered API) yields per direction the next
//! sequence number and a `ConnectionTrafficSecrets` (suite, key, IV); on a TLS 1.3
//! KeyUpdate, `KernelConnection::update_{tx,rx}_secret` yields the next one. This module
//! converts them; it never touches records. For TLS 1.2 AES-GCM, rustls's 12-byte IV is the
//! implicit salt followed by the explicit-nonce base — the layout [`TrafficKeys`] uses.

use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

use crate::suite::{CipherSuite, SessionError, SessionParams, TlsVersion, TrafficKeys};

/// The record format for a negotiated rustls protocol version (TLS 1.2 or 1.3 only).
pub fn tls_version(v: ProtocolVersion) -> Option<TlsVersion> {
    match v {
        ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
        ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
        _ => None,
    }
}

/// One direction's keys from rustls, starting at sequence number `seq`.
pub fn traffic_keys(
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Result<(CipherSuite, TrafficKeys), SessionError> {
    let (suite, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (CipherSuite::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (CipherSuite::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (CipherSuite::Chacha20Poly1305, key, iv)
        }
        _ => {
            return Err(SessionError::Backend(
                "rustls negotiated an AEAD this engine does not offload",
            ))
        }
    };
    let iv: [u8; 12] = iv
        .as_ref()
        .try_into()
        .map_err(|_| SessionError::Backend("rustls IV is not 12 bytes"))?;
    Ok((suite, TrafficKeys::new(suite, key.as_ref(), iv, seq)?))
}

impl SessionParams {
    /// Session parameters from rustls's extracted secrets.
    pub fn from_rustls(
        version: TlsVersion,
        secrets: &ExtractedSecrets,
        in_flight_limit: u32,
    ) -> Result<SessionParams, SessionError> {
        let (suite, tx) = traffic_keys(secrets.tx.0, &secrets.tx.1)?;
        let (rx_suite, rx) = traffic_keys(secrets.rx.0, &secrets.rx.1)?;
        if rx_suite != suite {
            return Err(SessionError::Backend(
                "rustls reported different suites per direction",
            ));
        }
        Ok(SessionParams {
            suite,
            version,
            tx,
            rx,
            in_flight_limit,
        })
    }
}
