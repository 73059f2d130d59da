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
//! per record, where rustls (and we) XOR the sequence number in. We hand it our next
//! record's explicit nonce, so the first kernel record matches ours and later ones may
//! differ in the explicit nonce only; both are valid (the peer reads the explicit nonce
//! from the record, and each stays unique per key). Not verified on this kernel (no `tls`
//! module); `tests/ktls.rs` checks it where the module exists.

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

/// Look for the `tls` upper-layer protocol.
pub fn probe() -> Probe {
    probe_from(std::fs::read_to_string(ULP_LIST))
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
#[allow(unsafe_code)]
pub fn attach_ulp(fd: RawFd) -> Result<(), KtlsError> {
    let p = probe();
    if !p.available {
        return Err(KtlsError::Unavailable(p.detail));
    }
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

/// Hand one direction's keys to the kernel. From here on the kernel seals (`Tx`) or opens
/// (`Rx`) records on this socket; `keys.seq` must be the next record's sequence number.
pub fn install_keys(
    fd: RawFd,
    dir: Direction,
    suite: CipherSuite,
    version: TlsVersion,
    keys: &TrafficKeys,
) -> Result<(), KtlsError> {
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
    let seq = keys.seq.to_be_bytes();
    let opt = match dir {
        Direction::Tx => libc::TLS_TX,
        Direction::Rx => libc::TLS_RX,
    };
    // GCM: salt = the IV's first 4 bytes; iv = the other 8 — for TLS 1.3 as they are (the
    // kernel XORs the sequence number in), for TLS 1.2 the next explicit nonce (the kernel
    // increments it per record). ChaCha takes all 12 and XORs the sequence number.
    let mut gcm_iv = [0u8; 8];
    gcm_iv.copy_from_slice(&keys.iv[4..]);
    if version == TlsVersion::Tls12 {
        for (b, s) in gcm_iv.iter_mut().zip(seq) {
            *b ^= s;
        }
    }
    let rc = match suite {
        CipherSuite::Aes128Gcm => {
            let mut c = libc::tls12_crypto_info_aes_gcm_128 {
                info,
                iv: [0; 8],
                key: [0; 16],
                salt: [0; 4],
                rec_seq: seq,
            };
            c.salt.copy_from_slice(&keys.iv[..4]);
            c.iv = gcm_iv;
            c.key.copy_from_slice(keys.key());
            let rc = setsockopt_tls(fd, opt, &c);
            wipe(&mut c.key);
            rc
        }
        CipherSuite::Aes256Gcm => {
            let mut c = libc::tls12_crypto_info_aes_gcm_256 {
                info,
                iv: [0; 8],
                key: [0; 32],
                salt: [0; 4],
                rec_seq: seq,
            };
            c.salt.copy_from_slice(&keys.iv[..4]);
            c.iv = gcm_iv;
            c.key.copy_from_slice(keys.key());
            let rc = setsockopt_tls(fd, opt, &c);
            wipe(&mut c.key);
            rc
        }
        CipherSuite::Chacha20Poly1305 => {
            let mut c = libc::tls12_crypto_info_chacha20_poly1305 {
                info,
                iv: keys.iv,
                key: [0; 32],
                salt: [],
                rec_seq: seq,
            };
            c.key.copy_from_slice(keys.key());
            let rc = setsockopt_tls(fd, opt, &c);
            wipe(&mut c.key);
            rc
        }
    };
    rc.map_err(|err| KtlsError::Keys {
        dir,
        suite,
        version,
        err,
    })
}

#[allow(unsafe_code)]
fn setsockopt_tls<T>(fd: RawFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised `#[repr(C)]` crypto_info struct from
    // `libc` whose exact size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TLS,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
