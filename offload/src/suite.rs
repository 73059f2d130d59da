//! Session parameters: cipher suite, TLS version, per-direction traffic keys.
//!
//! Owns the control-side description of one connection's record protection: what the
//! handshake (rustls) hands over once it is done — suite, version, key, IV and the next
//! sequence number for each direction. Built on the control side (allocation allowed);
//! never touched per record. Key bytes are wiped when dropped.

use std::fmt;

/// The AEAD that protects records. Matches the TLS 1.3 suites and the TLS 1.2
/// ECDHE-*-AES*-GCM / CHACHA20-POLY1305 suites (the key exchange is rustls's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherSuite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl CipherSuite {
    /// Key length in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            CipherSuite::Aes128Gcm => 16,
            CipherSuite::Aes256Gcm | CipherSuite::Chacha20Poly1305 => 32,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes128Gcm => "AES-128-GCM",
            CipherSuite::Aes256Gcm => "AES-256-GCM",
            CipherSuite::Chacha20Poly1305 => "CHACHA20-POLY1305",
        }
    }

    pub const ALL: [CipherSuite; 3] = [
        CipherSuite::Aes128Gcm,
        CipherSuite::Aes256Gcm,
        CipherSuite::Chacha20Poly1305,
    ];
}

impl fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The record format in use. The two differ in nonce, AAD and where the content type lives
/// (RFC 8446 §5.2 vs RFC 5246 §6.2.3.3 / RFC 5288 §3 / RFC 7905 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        })
    }
}

/// Which way a record travels from this endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Records we seal and send.
    Tx,
    /// Records we receive and open.
    Rx,
}

/// One direction's traffic keys as the handshake leaves them.
///
/// `iv` is the 12-byte write IV. For TLS 1.2 AES-GCM it is the 4-byte implicit salt
/// followed by 8 bytes from the key block (rustls's layout); the explicit nonce sent in
/// each record is `iv[4..] XOR seq`. `seq` is the sequence number of the next record.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficKeys {
    key: [u8; 32],
    key_len: u8,
    pub iv: [u8; 12],
    pub seq: u64,
}

impl TrafficKeys {
    /// Keys for `suite`; fails if the key length does not match the suite.
    pub fn new(
        suite: CipherSuite,
        key: &[u8],
        iv: [u8; 12],
        seq: u64,
    ) -> Result<Self, SessionError> {
        if key.len() != suite.key_len() {
            return Err(SessionError::KeyLength {
                suite,
                expected: suite.key_len(),
                got: key.len(),
            });
        }
        let mut bytes = [0u8; 32];
        bytes[..key.len()].copy_from_slice(key);
        Ok(TrafficKeys {
            key: bytes,
            key_len: key.len() as u8,
            iv,
            seq,
        })
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len as usize]
    }
}

impl fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("TrafficKeys")
            .field("key", &"<redacted>")
            .field("seq", &self.seq)
            .finish()
    }
}

// Volatile writes so the wipe of key material is not optimised away.
#[allow(unsafe_code)]
impl Drop for TrafficKeys {
    fn drop(&mut self) {
        for b in self.key.iter_mut().chain(self.iv.iter_mut()) {
            // SAFETY: `b` is a valid, aligned, exclusive reference into `self`; the
            // volatile write only keeps the compiler from eliding the wipe.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Everything needed to open a crypto session for one connection.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub suite: CipherSuite,
    pub version: TlsVersion,
    pub tx: TrafficKeys,
    pub rx: TrafficKeys,
    /// Most jobs of this session that may be in flight at once (0 = the engine default).
    pub in_flight_limit: u32,
}

/// Control-side errors: creating, updating or destroying sessions. Tells the operator or
/// the TLS layer what was wrong with what it handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("{suite} needs a {expected}-byte key, got {got} bytes")]
    KeyLength {
        suite: CipherSuite,
        expected: usize,
        got: usize,
    },
    #[error("the crypto library rejected the {0} key")]
    KeyRejected(CipherSuite),
    #[error("unknown or already destroyed crypto session")]
    UnknownSession,
    #[error("the session table is full ({0} sessions); raise `max_sessions` or close connections")]
    TableFull(usize),
    #[error("the backend could not create the session: {0}")]
    Backend(&'static str),
}
