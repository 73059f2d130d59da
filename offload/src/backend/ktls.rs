//! Kernel TLS: hand a connection's record keys to the kernel (`TCP_ULP "tls"`, then
//! `TLS_TX` / `TLS_RX`), which protects records on the socket itself — in software, or
//! inline on the NIC where the NIC offers TLS offload.
//!
//! Owns the probe (`/proc/sys/net/ipv4/tcp_available_ulp` must list `tls`) and the key
//! hand-over. Never called per record: once per connection (and per KeyUpdate, for
//! kernels that support rekeying). A kernel without the module gets a clear error,
//! never a silent half-installed socket.
//!
//! Record format note: for TLS 1.3 and ChaCha20-Poly1305 the kernel builds the same
//! nonces as [`crate::record`], so its records are byte-identical to ours. For TLS 1.2
//! AES-GCM the kernel starts the explicit nonce at the IV we hand it and increments it
//! per record, where rustls (and we) XOR the sequence number in; [`tls12_explicit_start`]
//! picks a start that no nonce used before the hand-over can be met again from. Records
//! then differ from ours in the explicit nonce only; both are valid (the peer reads the
//! explicit nonce from the record). Not exercised on this kernel (no `tls` module).
//!
//! Also owns the control-record plumbing of a kTLS socket: `recvmsg` with the
//! `TLS_GET_RECORD_TYPE` control message ([`recv_record`], parsed by
//! [`parse_record_type`]) and `sendmsg` with `TLS_SET_RECORD_TYPE` ([`send_record`]).

use std::io;
use std::os::fd::RawFd;

use crate::suite::{CipherSuite, Direction, TlsVersion, TrafficKeys};

const ULP_LIST: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// Whether the kernel can take TLS keys, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub available: bool,
    /// Human-readable finding, for logs ("kernel TLS available", or why not).
    pub detail: String,
}

/// Set to `1` to treat the kernel as having the `tls` module although the list does not
/// show it (tests on hosts without it: every hand-over then runs until the kernel refuses
/// the ULP and exercises the per-connection fallback).
pub const ASSUME_ENV: &str = "TICKMESH_KTLS_ASSUME_AVAILABLE";

/// Look for the `tls` upper-layer protocol.
pub fn probe() -> Probe {
    let p = probe_from(std::fs::read_to_string(ULP_LIST));
    if !p.available && std::env::var(ASSUME_ENV).is_ok_and(|v| v == "1") {
        return Probe {
            available: true,
            detail: format!("assumed available ({ASSUME_ENV}=1) although {}", p.detail),
        };
    }
    p
}

fn probe_from(list: io::Result<String>) -> Probe {
    match list {
        Ok(list) => {
            if list.split_whitespace().any(|u| u == "tls") {
                Probe {
                    available: true,
                    detail: "kernel TLS available (tcp_available_ulp lists tls)".into(),
                }
            } else {
                Probe {
                    available: false,
                    detail: format!(
                        "the kernel lacks the tls module (tcp_available_ulp: {:?}; try `modprobe tls`)",
                        list.trim()
                    ),
                }
            }
        }
        Err(e) => Probe {
            available: false,
            detail: format!("cannot read {ULP_LIST} ({e}); assuming no kernel TLS"),
        },
    }
}

/// Errors handing keys to the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KtlsError {
    #[error("kernel TLS is not available: {0}")]
    Unavailable(String),
    #[error(
        "setsockopt(TCP_ULP, \"tls\") failed: {0} (is the socket connected TCP, with no ULP yet?)"
    )]
    Ulp(io::Error),
    #[error("setsockopt(SOL_TLS, {dir:?}) for {suite} {version} failed: {err} (the kernel may not support this suite or direction)")]
    Keys {
        dir: Direction,
        suite: CipherSuite,
        version: TlsVersion,
        err: io::Error,
    },
}

/// Attach the `tls` ULP to a connected TCP socket. Call once, before [`install_keys`].
pub fn attach_ulp(fd: RawFd) -> Result<(), KtlsError> {
    let p = probe();
    if !p.available {
        return Err(KtlsError::Unavailable(p.detail));
    }
    set_ulp(fd)
}

/// [`attach_ulp`] without the probe, for callers that probed once at start (a kernel
/// without the module answers `ENOENT`, reported as [`KtlsError::Ulp`]).
#[allow(unsafe_code)]
pub fn set_ulp(fd: RawFd) -> Result<(), KtlsError> {
    let name = b"tls";
    // SAFETY: `name` is a live 3-byte buffer for the duration of the call and its exact
    // length is passed; the kernel copies it. An invalid fd yields EBADF, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(KtlsError::Ulp(io::Error::last_os_error()));
    }
    Ok(())
}

/// One direction's keys in the kernel's layout (`struct tls12_crypto_info_*` of
/// `include/uapi/linux/tls.h`, through `libc`'s `#[repr(C)]` copies; the layout test
/// pins their sizes and offsets to the kernel header's). The key bytes are wiped on drop.
pub enum CryptoInfo {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    /// Build the crypto_info for one direction whose next record has sequence number
    /// `keys.seq` (records `0..seq` were protected before the hand-over; for TLS 1.2
    /// AES-GCM that decides the explicit nonce, see [`tls12_explicit_start`]). For TLS 1.3
    /// and ChaCha20-Poly1305 the kernel XORs the sequence number into the 12-byte IV
    /// (RFC 8446 §5.3, RFC 7905 §2) as we do.
    pub fn new(suite: CipherSuite, version: TlsVersion, keys: &TrafficKeys) -> CryptoInfo {
        let info = libc::tls_crypto_info {
            version: match version {
                TlsVersion::Tls12 => libc::TLS_1_2_VERSION,
                TlsVersion::Tls13 => libc::TLS_1_3_VERSION,
            },
            cipher_type: match suite {
                CipherSuite::Aes128Gcm => libc::TLS_CIPHER_AES_GCM_128,
                CipherSuite::Aes256Gcm => libc::TLS_CIPHER_AES_GCM_256,
                CipherSuite::Chacha20Poly1305 => libc::TLS_CIPHER_CHACHA20_POLY1305,
            },
        };
        let rec_seq = keys.seq.to_be_bytes();
        // GCM: salt = the IV's first 4 bytes, iv = the other 8. TLS 1.3: as they are (the
        // kernel XORs the sequence number in). TLS 1.2: the next record's explicit nonce,
        // which the kernel increments per record.
        let mut gcm_iv = [0u8; 8];
        gcm_iv.copy_from_slice(&keys.iv[4..]);
        if version == TlsVersion::Tls12 {
            gcm_iv = tls12_explicit_start(u64::from_be_bytes(gcm_iv), keys.seq).to_be_bytes();
        }
        match suite {
            CipherSuite::Aes128Gcm => {
                let mut c = libc::tls12_crypto_info_aes_gcm_128 {
                    info,
                    iv: gcm_iv,
                    key: [0; 16],
                    salt: [0; 4],
                    rec_seq,
                };
                c.salt.copy_from_slice(&keys.iv[..4]);
                c.key.copy_from_slice(keys.key());
                CryptoInfo::Aes128Gcm(c)
            }
            CipherSuite::Aes256Gcm => {
                let mut c = libc::tls12_crypto_info_aes_gcm_256 {
                    info,
                    iv: gcm_iv,
                    key: [0; 32],
                    salt: [0; 4],
                    rec_seq,
                };
                c.salt.copy_from_slice(&keys.iv[..4]);
                c.key.copy_from_slice(keys.key());
                CryptoInfo::Aes256Gcm(c)
            }
            CipherSuite::Chacha20Poly1305 => {
                let mut c = libc::tls12_crypto_info_chacha20_poly1305 {
                    info,
                    iv: keys.iv,
                    key: [0; 32],
                    salt: [],
                    rec_seq,
                };
                c.key.copy_from_slice(keys.key());
                CryptoInfo::Chacha20Poly1305(c)
            }
        }
    }

    /// The bytes `setsockopt(SOL_TLS, TLS_TX|TLS_RX)` takes.
    #[allow(unsafe_code)]
    pub fn as_bytes(&self) -> &[u8] {
        fn view<T>(v: &T) -> &[u8] {
            // SAFETY: `T` is one of libc's `#[repr(C)]` crypto_info structs: only
            // `u16`/`u8` fields, no padding (the layout test checks that the size is the
            // sum of the fields), so every byte is initialised; the slice borrows `v`.
            unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
        }
        match self {
            CryptoInfo::Aes128Gcm(c) => view(c),
            CryptoInfo::Aes256Gcm(c) => view(c),
            CryptoInfo::Chacha20Poly1305(c) => view(c),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        match self {
            CryptoInfo::Aes128Gcm(c) => wipe(&mut c.key),
            CryptoInfo::Aes256Gcm(c) => wipe(&mut c.key),
            CryptoInfo::Chacha20Poly1305(c) => wipe(&mut c.key),
        }
    }
}

/// The first explicit nonce to give the kernel for a TLS 1.2 AES-GCM key whose records
/// `0..seq` were sealed by rustls or our engine, both of which use `base ^ n` for record
/// `n` (RFC 5288 leaves the choice open; only uniqueness per key matters). The kernel
/// instead starts at the nonce it is given and adds one per record
/// (`tls_advance_record_sn`). Starting at `base ^ seq` could walk into an earlier
/// `base ^ n` (base ending in 1, seq 1: the kernel's second record would reuse record
/// 0's nonce). Every `base ^ n` with `n < seq` lies in the aligned block of `base` of
/// size 2^bits(seq - 1); starting just above that block, the kernel reaches it again only
/// after 2^64 − 2·seq records, past the point where it stops (64-bit sequence numbers).
pub fn tls12_explicit_start(base: u64, seq: u64) -> u64 {
    if seq == 0 {
        return base;
    }
    let bits = 64 - (seq - 1).leading_zeros();
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (base | mask).wrapping_add(1)
}

/// Hand one direction's keys to the kernel. From here on the kernel seals (`Tx`) or opens
/// (`Rx`) records on this socket; `keys.seq` must be the next record's sequence number.
/// Called again on a TLS 1.3 KeyUpdate with the new keys (kernels ≥ 6.14; older ones
/// answer `EBUSY`, see [`KtlsError::rekey_unsupported`]).
pub fn install_keys(
    fd: RawFd,
    dir: Direction,
    suite: CipherSuite,
    version: TlsVersion,
    keys: &TrafficKeys,
) -> Result<(), KtlsError> {
    let info = CryptoInfo::new(suite, version, keys);
    let opt = match dir {
        Direction::Tx => libc::TLS_TX,
        Direction::Rx => libc::TLS_RX,
    };
    setsockopt_tls(fd, opt, info.as_bytes()).map_err(|err| KtlsError::Keys {
        dir,
        suite,
        version,
        err,
    })
}

impl KtlsError {
    /// The kernel refused new keys for a socket that already had some: it predates TLS
    /// 1.3 rekeying (Linux 6.14), so a KeyUpdate cannot be followed.
    pub fn rekey_unsupported(&self) -> bool {
        matches!(self, KtlsError::Keys { err, .. }
            if matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)))
    }
}

#[allow(unsafe_code)]
fn setsockopt_tls(fd: RawFd, opt: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a live byte slice whose exact length is passed; the kernel only
    // reads it. An invalid fd yields EBADF, not UB.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TLS,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// === control records (alerts, handshake messages) on a kTLS socket ===

/// TLS record content types (RFC 8446 §5.1).
pub const RECORD_ALERT: u8 = 21;
pub const RECORD_HANDSHAKE: u8 = 22;
pub const RECORD_APPLICATION_DATA: u8 = 23;

/// Why a control-message buffer from `recvmsg` could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmsgError {
    #[error("control message header cut short ({0} bytes left)")]
    ShortHeader(usize),
    #[error("control message length {len} is outside 16..={left}")]
    BadLength { len: usize, left: usize },
    #[error("TLS_GET_RECORD_TYPE control message without its type byte")]
    NoType,
}

/// The record type the kernel reported in `recvmsg`'s control buffer
/// (`SOL_TLS`/`TLS_GET_RECORD_TYPE`, one byte), or `None` when the buffer holds no such
/// message (the bytes were application data). Walks every `cmsghdr` in `control`
/// (the kernel's `CMSG_NXTHDR` rules: `cmsg_len` covers header and data, the next header
/// starts at the length rounded up to the word size) and rejects a malformed one.
pub fn parse_record_type(control: &[u8]) -> Result<Option<u8>, CmsgError> {
    const HDR: usize = size_of::<libc::cmsghdr>();
    const ALIGN: usize = size_of::<usize>();
    let mut at = 0;
    while at < control.len() {
        let left = control.len() - at;
        if left < HDR {
            return Err(CmsgError::ShortHeader(left));
        }
        let h = &control[at..at + HDR];
        let len = usize::from_ne_bytes(
            h[..ALIGN]
                .try_into()
                .map_err(|_| CmsgError::ShortHeader(left))?,
        );
        let level = i32::from_ne_bytes([h[ALIGN], h[ALIGN + 1], h[ALIGN + 2], h[ALIGN + 3]]);
        let typ = i32::from_ne_bytes([h[ALIGN + 4], h[ALIGN + 5], h[ALIGN + 6], h[ALIGN + 7]]);
        if len < HDR || len > left {
            return Err(CmsgError::BadLength { len, left });
        }
        if level == libc::SOL_TLS && typ == libc::TLS_GET_RECORD_TYPE {
            return match len > HDR {
                true => Ok(Some(control[at + HDR])),
                false => Err(CmsgError::NoType),
            };
        }
        at += len.div_ceil(ALIGN) * ALIGN;
    }
    Ok(None)
}

/// Room for one control message carrying the record type (`CMSG_SPACE(1)`), aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Receive the next record of a kTLS RX socket with its type (non-blocking): `Ok((type,
/// n))` with the decrypted content in `buf[..n]`; `WouldBlock` when nothing is ready.
/// Used after a plain receive failed with `EIO` (the next record is not application data
/// and a plain receive has nowhere to put its type). `buf` should hold a full record
/// (2^14 bytes); the kernel returns one record's content per call.
#[allow(unsafe_code)]
pub fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut cbuf = CmsgBuf([0; 32]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null name, no iovecs); fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len() as _;
    // SAFETY: `msg` points at `iov` (describing `buf`) and `cbuf`, both live and
    // exclusively borrowed for the call; the kernel writes within the given lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let clen = (msg.msg_controllen as usize).min(cbuf.0.len());
    let typ = parse_record_type(&cbuf.0[..clen])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .unwrap_or(RECORD_APPLICATION_DATA);
    Ok((typ, n as usize))
}

/// Send `out` as it is (before TX is in the kernel: handshake bytes rustls already
/// protected) on a non-blocking socket, as far as it goes; returns the bytes written.
#[allow(unsafe_code)]
pub fn send_raw(fd: RawFd, out: &[u8]) -> usize {
    let mut done = 0;
    while done < out.len() {
        // SAFETY: `out[done..]` is a live buffer of the given length, only read.
        let n = unsafe {
            libc::send(
                fd,
                out[done..].as_ptr().cast(),
                out.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

/// Send one record of type `record_type` with `payload` through a kTLS TX socket (the
/// kernel seals it under the current key): an alert, or a handshake message such as
/// KeyUpdate. Non-blocking; a short write is reported as `WouldBlock` (control records
/// are tiny and sent on an idle socket, so this does not happen in practice).
#[allow(unsafe_code)]
pub fn send_record(fd: RawFd, record_type: u8, payload: &[u8]) -> io::Result<()> {
    let mut cbuf = CmsgBuf([0; 32]);
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (space, clen) = unsafe { (libc::CMSG_SPACE(1) as usize, libc::CMSG_LEN(1) as usize) };
    let hdr = size_of::<libc::cmsghdr>();
    debug_assert!(space <= cbuf.0.len());
    cbuf.0[..size_of::<usize>()].copy_from_slice(&clen.to_ne_bytes());
    let a = size_of::<usize>();
    cbuf.0[a..a + 4].copy_from_slice(&libc::SOL_TLS.to_ne_bytes());
    cbuf.0[a + 4..a + 8].copy_from_slice(&libc::TLS_SET_RECORD_TYPE.to_ne_bytes());
    cbuf.0[hdr] = record_type;
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero msghdr is valid; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (describing `payload`, only read) and `cbuf`, both
    // live for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "control record written in part",
        ));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn wipe(bytes: &mut [u8]) {
    for b in bytes {
        // SAFETY: `b` is a valid exclusive reference; volatile keeps the wipe.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_the_ulp_list() {
        assert!(probe_from(Ok("mptcp tls\n".into())).available);
        let p = probe_from(Ok("mptcp\n".into()));
        assert!(!p.available);
        assert!(p.detail.contains("lacks the tls module"), "{}", p.detail);
        let p = probe_from(Err(io::Error::from(io::ErrorKind::NotFound)));
        assert!(!p.available);
    }

    /// The kernel's numbers (include/uapi/linux/tls.h), independent of libc's copies.
    #[test]
    fn constants_match_the_kernel_header() {
        assert_eq!(libc::SOL_TLS, 282);
        assert_eq!(libc::TLS_TX, 1);
        assert_eq!(libc::TLS_RX, 2);
        assert_eq!(libc::TLS_SET_RECORD_TYPE, 1);
        assert_eq!(libc::TLS_GET_RECORD_TYPE, 2);
        assert_eq!(libc::TLS_1_2_VERSION, 0x0303);
        assert_eq!(libc::TLS_1_3_VERSION, 0x0304);
        assert_eq!(libc::TLS_CIPHER_AES_GCM_128, 51);
        assert_eq!(libc::TLS_CIPHER_AES_GCM_256, 52);
        assert_eq!(libc::TLS_CIPHER_CHACHA20_POLY1305, 54);
    }

    /// Sizes and field offsets of the crypto_info structs as the kernel header lays them
    /// out (no padding: the kernel copies exactly `optlen` bytes and checks the size).
    #[test]
    fn crypto_info_layout_matches_the_kernel_header() {
        use libc::{
            tls12_crypto_info_aes_gcm_128 as G128, tls12_crypto_info_aes_gcm_256 as G256,
            tls12_crypto_info_chacha20_poly1305 as C20,
        };
        use std::mem::offset_of;
        assert_eq!(size_of::<libc::tls_crypto_info>(), 4);
        // (size, iv, key, salt, rec_seq)
        assert_eq!(
            (
                size_of::<G128>(),
                offset_of!(G128, iv),
                offset_of!(G128, key),
                offset_of!(G128, salt),
                offset_of!(G128, rec_seq)
            ),
            (40, 4, 12, 28, 32)
        );
        assert_eq!(
            (
                size_of::<G256>(),
                offset_of!(G256, iv),
                offset_of!(G256, key),
                offset_of!(G256, salt),
                offset_of!(G256, rec_seq)
            ),
            (56, 4, 12, 44, 48)
        );
        assert_eq!(
            (
                size_of::<C20>(),
                offset_of!(C20, iv),
                offset_of!(C20, key),
                offset_of!(C20, rec_seq)
            ),
            (56, 4, 16, 48)
        );
    }

    fn keys(suite: CipherSuite, seq: u64) -> TrafficKeys {
        let key: Vec<u8> = (0..suite.key_len() as u8).map(|i| 0xa0 + i).collect();
        let iv: [u8; 12] = std::array::from_fn(|i| 0x10 + i as u8);
        TrafficKeys::new(suite, &key, iv, seq).unwrap()
    }

    /// The bytes handed to setsockopt, field by field, per suite and version.
    #[test]
    fn crypto_info_bytes_per_suite_and_version() {
        let iv: [u8; 12] = std::array::from_fn(|i| 0x10 + i as u8);
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for suite in CipherSuite::ALL {
                let seq = 5u64;
                let k = keys(suite, seq);
                let info = CryptoInfo::new(suite, version, &k);
                let b = info.as_bytes();
                let ver: u16 = if version == TlsVersion::Tls12 {
                    0x0303
                } else {
                    0x0304
                };
                assert_eq!(&b[..2], &ver.to_ne_bytes(), "{suite} {version}");
                let cipher: u16 = match suite {
                    CipherSuite::Aes128Gcm => 51,
                    CipherSuite::Aes256Gcm => 52,
                    CipherSuite::Chacha20Poly1305 => 54,
                };
                assert_eq!(&b[2..4], &cipher.to_ne_bytes());
                let key_len = suite.key_len();
                match suite {
                    CipherSuite::Chacha20Poly1305 => {
                        assert_eq!(b.len(), 56);
                        assert_eq!(&b[4..16], &iv, "ChaCha takes the whole IV");
                        assert_eq!(&b[16..48], k.key());
                        assert_eq!(&b[48..56], &seq.to_be_bytes());
                    }
                    _ => {
                        assert_eq!(b.len(), 4 + 8 + key_len + 4 + 8);
                        let explicit = u64::from_be_bytes(iv[4..].try_into().unwrap());
                        let want = match version {
                            TlsVersion::Tls13 => explicit,
                            TlsVersion::Tls12 => tls12_explicit_start(explicit, seq),
                        };
                        assert_eq!(&b[4..12], &want.to_be_bytes(), "{suite} {version}");
                        assert_eq!(&b[12..12 + key_len], k.key());
                        assert_eq!(&b[12 + key_len..16 + key_len], &iv[..4], "salt");
                        assert_eq!(&b[16 + key_len..], &seq.to_be_bytes(), "rec_seq");
                    }
                }
            }
        }
    }

    /// The kernel's TLS 1.2 nonces (start, start+1, …) never meet a nonce used before
    /// the hand-over (`base ^ n`, n < seq) — checked for awkward bases and counts over
    /// the first 20,000 kernel records and, by arithmetic, up to 2^64 − 2·seq.
    #[test]
    fn tls12_kernel_nonces_never_repeat_earlier_ones() {
        for base in [
            0u64,
            1,
            2,
            3,
            0xff,
            0x8000_0000_0000_0001,
            u64::MAX,
            u64::MAX - 1,
            0x1234_5678_9abc_def1,
        ] {
            for seq in [0u64, 1, 2, 3, 4, 5, 7, 8, 9, 1000, 1 << 20] {
                let start = tls12_explicit_start(base, seq);
                let used: std::collections::HashSet<u64> =
                    (0..seq.min(4096)).map(|n| base ^ n).collect();
                for k in 0..20_000u64 {
                    let nonce = start.wrapping_add(k);
                    assert!(
                        !used.contains(&nonce),
                        "base {base:#x} seq {seq}: kernel record {k} reuses a nonce"
                    );
                }
                if seq > 0 {
                    // Distance from start (mod 2^64) to the lowest used nonce.
                    let lowest = (0..seq.min(4096)).map(|n| base ^ n).min().unwrap();
                    let gap = lowest.wrapping_sub(start);
                    assert!(
                        gap >= u64::MAX - 2 * seq,
                        "base {base:#x} seq {seq}: gap {gap}"
                    );
                }
            }
        }
        assert_eq!(
            tls12_explicit_start(7, 0),
            7,
            "nothing sent yet: start at the base"
        );
        assert_eq!(tls12_explicit_start(0x11, 1), 0x12);
    }

    fn cmsg(level: i32, typ: i32, data: &[u8]) -> Vec<u8> {
        let hdr = size_of::<libc::cmsghdr>();
        let len = hdr + data.len();
        let mut v = vec![0u8; len.div_ceil(8) * 8];
        v[..8].copy_from_slice(&len.to_ne_bytes());
        v[8..12].copy_from_slice(&level.to_ne_bytes());
        v[12..16].copy_from_slice(&typ.to_ne_bytes());
        v[hdr..len].copy_from_slice(data);
        v
    }

    /// Our byte layout of a control message agrees with libc's CMSG macros.
    #[test]
    #[allow(unsafe_code)]
    fn cmsg_layout_matches_libc() {
        let buf = cmsg(libc::SOL_TLS, libc::TLS_GET_RECORD_TYPE, &[21]);
        // SAFETY: only size computations.
        let (len, space) = unsafe { (libc::CMSG_LEN(1) as usize, libc::CMSG_SPACE(1) as usize) };
        assert_eq!(usize::from_ne_bytes(buf[..8].try_into().unwrap()), len);
        assert_eq!(buf.len(), space);
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = buf.as_ptr() as *mut _;
        msg.msg_controllen = buf.len() as _;
        // SAFETY: `msg` describes `buf`, live and at least one header long.
        let data0 = unsafe {
            let h = libc::CMSG_FIRSTHDR(&msg);
            *libc::CMSG_DATA(h)
        };
        assert_eq!(data0, 21);
    }

    #[test]
    fn record_type_is_read_from_the_control_buffer() {
        assert_eq!(
            parse_record_type(&[]),
            Ok(None),
            "no control message: application data"
        );
        let alert = cmsg(libc::SOL_TLS, libc::TLS_GET_RECORD_TYPE, &[RECORD_ALERT]);
        assert_eq!(parse_record_type(&alert), Ok(Some(21)));
        // Another message first (SO_TIMESTAMP-like), then ours.
        let mut two = cmsg(libc::SOL_SOCKET, libc::SCM_TIMESTAMP, &[0; 16]);
        two.extend(cmsg(
            libc::SOL_TLS,
            libc::TLS_GET_RECORD_TYPE,
            &[RECORD_HANDSHAKE],
        ));
        assert_eq!(parse_record_type(&two), Ok(Some(22)));
        // Only an unrelated message.
        assert_eq!(
            parse_record_type(&cmsg(libc::SOL_SOCKET, 1, &[1, 2, 3])),
            Ok(None)
        );
    }

    #[test]
    fn malformed_control_buffers_are_errors() {
        let good = cmsg(libc::SOL_TLS, libc::TLS_GET_RECORD_TYPE, &[23]);
        // Cut inside the header.
        assert_eq!(
            parse_record_type(&good[..10]),
            Err(CmsgError::ShortHeader(10))
        );
        // Length shorter than a header.
        let mut bad = good.clone();
        bad[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert!(matches!(
            parse_record_type(&bad),
            Err(CmsgError::BadLength { len: 3, .. })
        ));
        // Length past the buffer (truncated control data, MSG_CTRUNC).
        let mut bad = good.clone();
        bad[..8].copy_from_slice(&4096usize.to_ne_bytes());
        assert!(matches!(
            parse_record_type(&bad),
            Err(CmsgError::BadLength { len: 4096, .. })
        ));
        // Our message with no type byte.
        let empty = cmsg(libc::SOL_TLS, libc::TLS_GET_RECORD_TYPE, &[]);
        assert_eq!(parse_record_type(&empty), Err(CmsgError::NoType));
        // A good message followed by garbage shorter than a header.
        let mut tail = cmsg(libc::SOL_SOCKET, 1, &[0; 8]);
        tail.extend([1, 2, 3]);
        assert_eq!(parse_record_type(&tail), Err(CmsgError::ShortHeader(3)));
        // Zero length would loop forever if accepted.
        let zero = vec![0u8; 16];
        assert!(matches!(
            parse_record_type(&zero),
            Err(CmsgError::BadLength { len: 0, .. })
        ));
    }

    /// Without the module, every socket-level step is a clear error (never a panic); on
    /// a plain TCP socket the SOL_TLS calls fail with the kernel's own error.
    #[test]
    fn control_calls_on_a_plain_socket_fail_cleanly() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        use std::os::fd::AsRawFd;
        let fd = c.as_raw_fd();
        let k = keys(CipherSuite::Aes128Gcm, 0);
        let err = install_keys(
            fd,
            Direction::Tx,
            CipherSuite::Aes128Gcm,
            TlsVersion::Tls13,
            &k,
        )
        .unwrap_err();
        assert!(matches!(err, KtlsError::Keys { .. }), "{err}");
        let mut buf = [0u8; 64];
        let e = recv_record(fd, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        // Plain TCP ignores the SOL_TLS control message and sends the payload as it is:
        // the call must return (non-blocking), whatever it reports.
        let _ = send_record(fd, RECORD_ALERT, &[1, 0]);
    }

    #[test]
    fn attach_without_module_is_a_clear_error() {
        if probe().available {
            eprintln!("kernel has tls: attach_without_module test does not apply");
            return;
        }
        let err = attach_ulp(-1).unwrap_err();
        assert!(matches!(err, KtlsError::Unavailable(_)), "{err}");
    }
}
