//! Safe wrappers over the few socket syscalls the engines issue themselves (the epoll
//! engine's data path, and datagram forwarding in both engines). Results use io_uring's
//! convention: `>= 0` success, `-errno` failure, so proxies see one shape of result.
//!
//! Never blocks: every socket passed here is non-blocking. The functions take raw fds:
//! a stale one yields `-EBADF` (or, if reused, another socket's data), never memory
//! unsafety; callers keep the owning `OwnedFd` alive across the call.

use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

#[inline]
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[inline]
fn ret(n: isize) -> i32 {
    if n < 0 {
        -errno()
    } else {
        n as i32
    }
}

/// `recv(2)` into `buf`.
#[inline]
pub fn recv(fd: RawFd, buf: &mut [u8]) -> i32 {
    // SAFETY: buf is valid for writes of buf.len() bytes for the duration of the call.
    ret(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

/// `send(2)` of `buf` (no SIGPIPE: a reset peer is an `-EPIPE` result).
#[inline]
pub fn send(fd: RawFd, buf: &[u8]) -> i32 {
    // SAFETY: buf is valid for reads of buf.len() bytes for the duration of the call.
    ret(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// `sendmsg(2)` of `a` then `b` in one call (no SIGPIPE).
#[inline]
pub fn send2(fd: RawFd, a: &[u8], b: &[u8]) -> i32 {
    let mut iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    // SAFETY: msg points at two iovecs over slices valid for reads for the call; the
    // kernel only reads them.
    ret(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })
}

/// `recvfrom(2)`: the datagram's length and sender.
#[inline]
pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> (i32, Option<SocketAddr>) {
    let mut ss = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buf and ss are valid for writes of the lengths passed; len is in/out.
    let n = ret(unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            ss.as_mut_ptr().cast(),
            &mut len,
        )
    });
    if n < 0 {
        return (n, None);
    }
    // SAFETY: zero-initialised storage, filled by the kernel up to `len`.
    let ss = unsafe { ss.assume_init() };
    (n, from_storage(&ss))
}

/// `sendto(2)` of one datagram to `to`.
#[inline]
pub fn send_to(fd: RawFd, buf: &[u8], to: &SocketAddr) -> i32 {
    let (ss, len) = to_storage(to);
    // SAFETY: buf is valid for reads; ss holds a sockaddr of `len` bytes.
    ret(unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
}

/// A socket address in the kernel's layout.
pub fn to_storage(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let s = socket2::SockAddr::from(*a);
    // SAFETY: sockaddr_storage is plain old data; SockAddr holds a valid one.
    let ss = unsafe { *s.as_ptr().cast::<libc::sockaddr_storage>() };
    (ss, s.len())
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_kernel_layout() {
        for a in ["127.0.0.1:7000", "[::1]:9", "[fe80::1%3]:443"] {
            let a: SocketAddr = a.parse().unwrap();
            let (ss, _) = to_storage(&a);
            assert_eq!(from_storage(&ss), Some(a));
        }
    }
}
