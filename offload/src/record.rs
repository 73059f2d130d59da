//! TLS record protection, in place, in a job's record-sized buffer.
//!
//! Owns the wire formats: TLS 1.3 (RFC 8446 §5.2–5.3: nonce = IV XOR seq, AAD = the 5-byte
//! record header, inner plaintext = content || type, outer type always application_data)
//! and TLS 1.2 AEAD (RFC 5246 §6.2.3.3 with RFC 5288 §3 for AES-GCM — 8-byte explicit
//! nonce in the record, AAD = seq || type || version || plaintext length — and RFC 7905 §2
//! for ChaCha20-Poly1305 — nonce = IV XOR seq, no explicit part).
//!
//! Never allocates, never panics on any input: every length is checked before it is used,
//! and a bad record comes back as a [`JobError`]. Seal never pads (padding is a policy the
//! TLS layer may add later); open accepts padding.

use ring::aead;

use crate::error::JobError;
use crate::suite::{CipherSuite, SessionError, TlsVersion, TrafficKeys};

/// TLS record header: type (1), legacy version (2), length (2).
pub const HEADER_LEN: usize = 5;
/// Largest plaintext fragment (RFC 8446 §5.1, RFC 5246 §6.2.1): 2^14.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext expansion a peer may send (RFC 8446 §5.2): 256 bytes.
pub const MAX_EXPANSION: usize = 256;
/// Largest full record this engine accepts, and the size of every job buffer.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_PLAINTEXT + MAX_EXPANSION;
/// AEAD tag length (all three suites).
pub const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM explicit nonce length (RFC 5288 §3).
pub const EXPLICIT_NONCE_LEN: usize = 8;

/// Legacy record version on the wire: 0x0303 for TLS 1.2 and (frozen) for TLS 1.3.
const WIRE_VERSION: [u8; 2] = [0x03, 0x03];

/// Record content types (RFC 8446 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ContentType {
    ChangeCipherSpec = 20,
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

impl ContentType {
    /// Types that may be protected under traffic keys: alert, handshake, application data.
    pub fn protectable(byte: u8) -> Option<ContentType> {
        match byte {
            21 => Some(ContentType::Alert),
            22 => Some(ContentType::Handshake),
            23 => Some(ContentType::ApplicationData),
            _ => None,
        }
    }
}

/// One direction's record key, ready to use: the AEAD key schedule, the IV, the format.
/// Immutable once built; shared (`Arc`) by the session and its in-flight jobs, so a key
/// update never changes the key under a job that was already submitted.
pub struct RecordKey {
    aead: aead::LessSafeKey,
    iv: [u8; 12],
    suite: CipherSuite,
    version: TlsVersion,
    /// The device's own session for this key (a cryptodev AEAD session), when the backend
    /// made one on the control side; freed with the key.
    device: Option<DeviceKey>,
}

/// A backend's per-key device state (e.g. a DPDK cryptodev session), opaque to the engine.
pub type DeviceKey = Box<dyn std::any::Any + Send + Sync>;

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey")
            .field("suite", &self.suite)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl RecordKey {
    pub fn new(
        suite: CipherSuite,
        version: TlsVersion,
        keys: &TrafficKeys,
    ) -> Result<Self, SessionError> {
        let alg = match suite {
            CipherSuite::Aes128Gcm => &aead::AES_128_GCM,
            CipherSuite::Aes256Gcm => &aead::AES_256_GCM,
            CipherSuite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        if keys.key().len() != suite.key_len() {
            return Err(SessionError::KeyLength {
                suite,
                expected: suite.key_len(),
                got: keys.key().len(),
            });
        }
        let unbound =
            aead::UnboundKey::new(alg, keys.key()).map_err(|_| SessionError::KeyRejected(suite))?;
        Ok(RecordKey {
            aead: aead::LessSafeKey::new(unbound),
            iv: keys.iv,
            suite,
            version,
            device: None,
        })
    }

    /// Attach the backend's device session for this key (control side, once).
    pub fn with_device(mut self, device: Option<DeviceKey>) -> Self {
        self.device = device;
        self
    }

    /// The backend's device session, if it made one.
    pub fn device(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        self.device.as_deref()
    }

    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    pub fn version(&self) -> TlsVersion {
        self.version
    }

    /// Bytes between the header and the protected payload: the TLS 1.2 GCM explicit nonce.
    pub fn payload_offset(&self) -> usize {
        HEADER_LEN + self.explicit_nonce_len()
    }

    fn explicit_nonce_len(&self) -> usize {
        match (self.version, self.suite) {
            (TlsVersion::Tls12, CipherSuite::Aes128Gcm | CipherSuite::Aes256Gcm) => {
                EXPLICIT_NONCE_LEN
            }
            _ => 0,
        }
    }

    /// Bytes a sealed record adds to `n` payload bytes (header excluded).
    pub fn overhead(&self) -> usize {
        self.explicit_nonce_len()
            + TAG_LEN
            + match self.version {
                TlsVersion::Tls13 => 1, // inner content type
                TlsVersion::Tls12 => 0,
            }
    }

    /// IV XOR the sequence number, left-padded to 12 bytes (RFC 8446 §5.3, RFC 7905 §2;
    /// the same construction gives rustls's TLS 1.2 GCM explicit nonce).
    #[inline]
    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = self.iv;
        let mut low = [0u8; 8];
        low.copy_from_slice(&n[4..]);
        n[4..].copy_from_slice(&(u64::from_be_bytes(low) ^ seq).to_be_bytes());
        n
    }

    /// Frame a seal: write the header (and the TLS 1.2 explicit nonce, or the TLS 1.3 inner
    /// content type) around the payload already placed at
    /// `buf[self.payload_offset()..][..payload_len]`, and say what the AEAD must do.
    /// Software and device backends share this, so their records are byte-identical.
    pub fn plan_seal(
        &self,
        seq: u64,
        content_type: ContentType,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<AeadPlan, JobError> {
        if payload_len > MAX_PLAINTEXT {
            return Err(JobError::RecordOverflow);
        }
        let off = self.payload_offset();
        let record_len = HEADER_LEN + payload_len + self.overhead();
        if buf.len() < record_len {
            return Err(JobError::RecordOverflow);
        }
        let nonce = self.nonce(seq);
        let body_len = (record_len - HEADER_LEN) as u16;
        let mut aad = [0u8; 13];
        let (outer_type, aad_len, data_len) = match self.version {
            TlsVersion::Tls13 => {
                buf[off + payload_len] = content_type as u8;
                (
                    ContentType::ApplicationData as u8,
                    HEADER_LEN,
                    payload_len + 1,
                )
            }
            TlsVersion::Tls12 => {
                buf[HEADER_LEN..off].copy_from_slice(&nonce[12 - self.explicit_nonce_len()..]);
                aad = tls12_aad(seq, content_type as u8, payload_len);
                (content_type as u8, 13, payload_len)
            }
        };
        let header = [
            outer_type,
            WIRE_VERSION[0],
            WIRE_VERSION[1],
            (body_len >> 8) as u8,
            body_len as u8,
        ];
        buf[..HEADER_LEN].copy_from_slice(&header);
        if self.version == TlsVersion::Tls13 {
            aad[..HEADER_LEN].copy_from_slice(&header);
        }
        Ok(AeadPlan {
            nonce,
            aad,
            aad_len,
            data: off..off + data_len,
            tag_at: off + data_len,
        })
    }

    /// Seal the payload already placed at `buf[self.payload_offset()..][..payload_len]`
    /// into a full record starting at `buf[0]`. Returns the record length.
    #[inline]
    pub fn seal_in_place(
        &self,
        seq: u64,
        content_type: ContentType,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, JobError> {
        if self.version == TlsVersion::Tls13 {
            return self.seal_tls13(seq, content_type, buf, payload_len);
        }
        self.seal_planned(seq, content_type, buf, payload_len)
    }

    /// Seal through [`RecordKey::plan_seal`], as a device backend does.
    fn seal_planned(
        &self,
        seq: u64,
        content_type: ContentType,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, JobError> {
        let plan = self.plan_seal(seq, content_type, buf, payload_len)?;
        let (data, tag_out) = buf[..plan.tag_at + TAG_LEN].split_at_mut(plan.tag_at);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(plan.nonce),
                aead::Aad::from(plan.aad()),
                &mut data[plan.data.clone()],
            )
            .map_err(|_| JobError::Crypto)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(plan.tag_at + TAG_LEN)
    }

    /// TLS 1.3 seal without building an [`AeadPlan`]: the bytes [`RecordKey::plan_seal`]
    /// describes (tests hold the two byte-identical), written and sealed in one pass.
    /// The plan is a ~64-byte value returned through memory; at 64-byte records moving
    /// it (and the tag's `Result`) cost a measurable share of the per-job overhead.
    #[inline]
    fn seal_tls13(
        &self,
        seq: u64,
        content_type: ContentType,
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, JobError> {
        if payload_len > MAX_PLAINTEXT {
            return Err(JobError::RecordOverflow);
        }
        // payload || inner content type || tag
        let tag_at = HEADER_LEN + payload_len + 1;
        let record_len = tag_at + TAG_LEN;
        let Some(record) = buf.get_mut(..record_len) else {
            return Err(JobError::RecordOverflow);
        };
        let body_len = (record_len - HEADER_LEN) as u16;
        let header = [
            ContentType::ApplicationData as u8,
            WIRE_VERSION[0],
            WIRE_VERSION[1],
            (body_len >> 8) as u8,
            body_len as u8,
        ];
        record[..HEADER_LEN].copy_from_slice(&header);
        record[tag_at - 1] = content_type as u8;
        let (data, tag_out) = record.split_at_mut(tag_at);
        match self.aead.seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key(self.nonce(seq)),
            aead::Aad::from(header),
            &mut data[HEADER_LEN..],
        ) {
            Ok(tag) => tag_out.copy_from_slice(tag.as_ref()),
            Err(_) => return Err(JobError::Crypto),
        }
        Ok(record_len)
    }

    /// TLS 1.3 open without building an [`AeadPlan`] (the checks of
    /// [`RecordKey::plan_open`] and [`RecordKey::finish_open`], in the same order, so the
    /// same input gives the same error).
    #[inline]
    fn open_tls13(
        &self,
        seq: u64,
        buf: &mut [u8],
        record_len: usize,
    ) -> Result<(ContentType, std::ops::Range<usize>), JobError> {
        let record = buf.get_mut(..record_len).ok_or(JobError::RecordOverflow)?;
        let header = parse_header(record)?;
        let body_len = header.length as usize;
        if body_len > MAX_PLAINTEXT + MAX_EXPANSION {
            return Err(JobError::RecordOverflow);
        }
        if HEADER_LEN + body_len != record_len {
            return Err(if HEADER_LEN + body_len > record_len {
                JobError::Truncated
            } else {
                JobError::LengthMismatch
            });
        }
        if header.version != WIRE_VERSION {
            return Err(JobError::BadVersion);
        }
        if header.content_type != ContentType::ApplicationData as u8 {
            return Err(JobError::BadContentType);
        }
        if body_len < TAG_LEN + 1 {
            return Err(JobError::Truncated);
        }
        // ring's `open_in_place` wrapper (tag split, tag copy, a CPU-feature lookup) is not
        // inlined here and cost ~50 instructions per record; splitting the tag ourselves
        // lets the separate-tag call inline, and the header is the AAD where it lies.
        let (body, tag) = record.split_at_mut(record_len - TAG_LEN);
        let (header, ciphertext) = body.split_at_mut(HEADER_LEN);
        let mut received = [0u8; TAG_LEN];
        received.copy_from_slice(tag);
        let plain_len = self
            .aead
            .open_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(self.nonce(seq)),
                aead::Aad::from(&*header),
                aead::Tag::from(received),
                ciphertext,
                0..,
            )
            .map_err(|_| JobError::BadRecordMac)?
            .len();
        let plain = &record[HEADER_LEN..HEADER_LEN + plain_len];
        if plain.len() > MAX_PLAINTEXT + 1 {
            return Err(JobError::RecordOverflow);
        }
        let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(JobError::BadContentType);
        };
        let content_type =
            ContentType::protectable(plain[type_at]).ok_or(JobError::BadContentType)?;
        Ok((content_type, HEADER_LEN..HEADER_LEN + type_at))
    }

    /// Check the full record in `buf[..record_len]` before decryption (lengths, version,
    /// outer type) and say what the AEAD must do: nonce, AAD, ciphertext range, tag.
    pub fn plan_open(&self, seq: u64, buf: &[u8], record_len: usize) -> Result<AeadPlan, JobError> {
        let header = parse_header(buf.get(..record_len).ok_or(JobError::RecordOverflow)?)?;
        let body_len = header.length as usize;
        if body_len > MAX_PLAINTEXT + MAX_EXPANSION {
            return Err(JobError::RecordOverflow);
        }
        if HEADER_LEN + body_len != record_len {
            return Err(if HEADER_LEN + body_len > record_len {
                JobError::Truncated
            } else {
                JobError::LengthMismatch
            });
        }
        if header.version != WIRE_VERSION {
            return Err(JobError::BadVersion);
        }
        let off = self.payload_offset();
        match self.version {
            TlsVersion::Tls13 => {
                // RFC 8446 §5.2: the outer type of a protected record is application_data.
                if header.content_type != ContentType::ApplicationData as u8 {
                    return Err(JobError::BadContentType);
                }
                if body_len < TAG_LEN + 1 {
                    return Err(JobError::Truncated);
                }
                let mut aad = [0u8; 13];
                aad[..HEADER_LEN].copy_from_slice(&buf[..HEADER_LEN]);
                Ok(AeadPlan {
                    nonce: self.nonce(seq),
                    aad,
                    aad_len: HEADER_LEN,
                    data: HEADER_LEN..record_len - TAG_LEN,
                    tag_at: record_len - TAG_LEN,
                })
            }
            TlsVersion::Tls12 => {
                ContentType::protectable(header.content_type).ok_or(JobError::BadContentType)?;
                let explicit = self.explicit_nonce_len();
                if body_len < explicit + TAG_LEN {
                    return Err(JobError::Truncated);
                }
                let plain_len = body_len - explicit - TAG_LEN;
                if plain_len > MAX_PLAINTEXT {
                    return Err(JobError::RecordOverflow);
                }
                let nonce = if explicit > 0 {
                    // RFC 5288 §3: nonce = implicit salt || explicit part from the record.
                    let mut n = [0u8; 12];
                    n[..4].copy_from_slice(&self.iv[..4]);
                    n[4..].copy_from_slice(&buf[HEADER_LEN..off]);
                    n
                } else {
                    self.nonce(seq)
                };
                Ok(AeadPlan {
                    nonce,
                    aad: tls12_aad(seq, header.content_type, plain_len),
                    aad_len: 13,
                    data: off..off + plain_len,
                    tag_at: off + plain_len,
                })
            }
        }
    }

    /// After a successful decryption of `plan.data` in `buf`: the content type and where
    /// the plaintext lies (TLS 1.3: inner type found, zero padding stripped, §5.2/§5.4).
    pub fn finish_open(
        &self,
        buf: &[u8],
        plan_data: std::ops::Range<usize>,
    ) -> Result<(ContentType, std::ops::Range<usize>), JobError> {
        match self.version {
            TlsVersion::Tls13 => {
                let plain = &buf[plan_data.clone()];
                // RFC 8446 §5.2: TLSInnerPlaintext must not exceed 2^14 + 1 bytes.
                if plain.len() > MAX_PLAINTEXT + 1 {
                    return Err(JobError::RecordOverflow);
                }
                let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(JobError::BadContentType);
                };
                let content_type =
                    ContentType::protectable(plain[type_at]).ok_or(JobError::BadContentType)?;
                Ok((content_type, plan_data.start..plan_data.start + type_at))
            }
            TlsVersion::Tls12 => {
                let content_type =
                    ContentType::protectable(buf[0]).ok_or(JobError::BadContentType)?;
                Ok((content_type, plan_data))
            }
        }
    }

    /// Open the full record in `buf[..record_len]` in place. Returns the inner content
    /// type and where the plaintext now lies in `buf`.
    #[inline]
    pub fn open_in_place(
        &self,
        seq: u64,
        buf: &mut [u8],
        record_len: usize,
    ) -> Result<(ContentType, std::ops::Range<usize>), JobError> {
        if self.version == TlsVersion::Tls13 {
            return self.open_tls13(seq, buf, record_len);
        }
        self.open_planned(seq, buf, record_len)
    }

    /// Open through [`RecordKey::plan_open`] and [`RecordKey::finish_open`], as a device
    /// backend does.
    fn open_planned(
        &self,
        seq: u64,
        buf: &mut [u8],
        record_len: usize,
    ) -> Result<(ContentType, std::ops::Range<usize>), JobError> {
        let plan = self.plan_open(seq, buf, record_len)?;
        self.aead
            .open_in_place(
                aead::Nonce::assume_unique_for_key(plan.nonce),
                aead::Aad::from(plan.aad()),
                &mut buf[plan.data.start..plan.tag_at + TAG_LEN],
            )
            .map_err(|_| JobError::BadRecordMac)?;
        self.finish_open(buf, plan.data)
    }
}

/// What the AEAD must do to one record, whoever runs it (`ring` or a device): the nonce,
/// the additional data, the bytes to encrypt or decrypt in place, and where the tag goes
/// (seal) or lies (open). Built by [`RecordKey::plan_seal`] / [`RecordKey::plan_open`].
#[derive(Debug, Clone)]
pub struct AeadPlan {
    pub nonce: [u8; 12],
    aad: [u8; 13],
    pub aad_len: usize,
    pub data: std::ops::Range<usize>,
    pub tag_at: usize,
}

impl AeadPlan {
    /// The additional data: the record header (TLS 1.3) or seq ‖ type ‖ version ‖ length
    /// (TLS 1.2).
    pub fn aad(&self) -> &[u8] {
        &self.aad[..self.aad_len]
    }
}

/// TLS 1.2 additional data: seq_num || type || version || length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, content_type: u8, plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&WIRE_VERSION);
    aad[11..13].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub content_type: u8,
    pub version: [u8; 2],
    pub length: u16,
}

/// Parse the 5-byte header at the start of `bytes`; `Truncated` if there are fewer.
pub fn parse_header(bytes: &[u8]) -> Result<Header, JobError> {
    match bytes {
        [t, v0, v1, l0, l1, ..] => Ok(Header {
            content_type: *t,
            version: [*v0, *v1],
            length: u16::from_be_bytes([*l0, *l1]),
        }),
        _ => Err(JobError::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: TlsVersion, suite: CipherSuite) -> RecordKey {
        let k = TrafficKeys::new(suite, &vec![7u8; suite.key_len()], [9u8; 12], 0).unwrap();
        RecordKey::new(suite, version, &k).unwrap()
    }

    #[test]
    fn round_trip_every_format_and_size() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for suite in CipherSuite::ALL {
                let k = key(version, suite);
                for n in [0usize, 1, 64, 1024, MAX_PLAINTEXT] {
                    let mut buf = vec![0u8; MAX_RECORD];
                    let off = k.payload_offset();
                    for (i, b) in buf[off..off + n].iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    let len = k
                        .seal_in_place(42, ContentType::Handshake, &mut buf, n)
                        .unwrap();
                    assert_eq!(len, HEADER_LEN + n + k.overhead());
                    let (ct, range) = k.open_in_place(42, &mut buf, len).unwrap();
                    assert_eq!(ct, ContentType::Handshake);
                    assert_eq!(range.len(), n, "{version} {suite} {n}");
                    assert!(buf[range].iter().enumerate().all(|(i, &b)| b == i as u8));
                }
            }
        }
    }

    #[test]
    fn wrong_sequence_number_fails_authentication() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let k = key(version, CipherSuite::Chacha20Poly1305);
            let mut buf = vec![0u8; MAX_RECORD];
            let len = k
                .seal_in_place(5, ContentType::ApplicationData, &mut buf, 10)
                .unwrap();
            assert_eq!(
                k.open_in_place(6, &mut buf, len),
                Err(JobError::BadRecordMac)
            );
        }
    }

    /// The TLS 1.3 fast paths write and accept exactly what the planned paths (the ones
    /// device backends use) do: same records, same plaintext, same error per bad input.
    #[test]
    fn tls13_fast_paths_match_the_planned_ones() {
        for suite in CipherSuite::ALL {
            let k = key(TlsVersion::Tls13, suite);
            for n in [
                0usize,
                1,
                15,
                16,
                17,
                64,
                1000,
                MAX_PLAINTEXT,
                MAX_PLAINTEXT + 1,
            ] {
                for ct in [ContentType::ApplicationData, ContentType::Handshake] {
                    let mut a = vec![0u8; MAX_RECORD];
                    for (i, b) in a[HEADER_LEN..HEADER_LEN + n.min(MAX_PLAINTEXT)]
                        .iter_mut()
                        .enumerate()
                    {
                        *b = (i * 7) as u8;
                    }
                    let mut b = a.clone();
                    let fast = k.seal_in_place(9, ct, &mut a, n);
                    let planned = k.seal_planned(9, ct, &mut b, n);
                    assert_eq!(fast, planned, "{suite} {n}");
                    let Ok(len) = fast else { continue };
                    assert_eq!(a[..len], b[..len], "{suite} {n}");
                    // Every single-byte corruption and every truncation opens to the same
                    // verdict both ways (a sample of positions keeps it quick).
                    let mut cases: Vec<(usize, Option<usize>)> = vec![(len, None)];
                    for at in [0, 1, 2, 3, 4, 5, len / 2, len - 1] {
                        cases.push((len, Some(at)));
                    }
                    for cut in [0, 3, 5, 6, len - 1] {
                        cases.push((cut, None));
                    }
                    for (rec_len, flip) in cases {
                        let mut x = a.clone();
                        if let Some(at) = flip {
                            x[at] ^= 0x41;
                        }
                        let mut y = x.clone();
                        let fo = k.open_in_place(9, &mut x, rec_len);
                        let po = k.open_planned(9, &mut y, rec_len);
                        assert_eq!(fo, po, "{suite} {n} len {rec_len} flip {flip:?}");
                        if let Ok((_, r)) = fo {
                            assert_eq!(x[r.clone()], y[r], "{suite} {n}");
                        }
                    }
                }
            }
            // Zero padding after the inner type (RFC 8446 §5.4) and all-zero plaintext.
            let mut buf = vec![0u8; MAX_RECORD];
            let len = k
                .seal_in_place(3, ContentType::ApplicationData, &mut buf, 4)
                .unwrap();
            let mut padded = vec![0u8; MAX_RECORD];
            padded[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&[1, 2, 3, 4, 23, 0, 0, 0]);
            let plen = k
                .seal_in_place(4, ContentType::Alert, &mut padded, 7)
                .unwrap();
            for (seq, rec, rlen) in [(3u64, &buf, len), (4, &padded, plen)] {
                let (mut x, mut y) = (rec.clone(), rec.clone());
                assert_eq!(
                    k.open_in_place(seq, &mut x, rlen),
                    k.open_planned(seq, &mut y, rlen)
                );
            }
        }
    }

    #[test]
    fn header_parser_rejects_short_input() {
        for n in 0..HEADER_LEN {
            assert_eq!(parse_header(&[23u8; 5][..n]), Err(JobError::Truncated));
        }
    }
}
