//! Socket set-up shared by the engines: listener sockets sharded with `SO_REUSEPORT`,
//! one per worker, bound by the control plane so that a bind failure rejects an apply
//! before anything is swapped.
//!
//! Owns only set-up; never reads or writes data. Sockets are non-blocking.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Weak};

use socket2::{Domain, SockRef, Socket, Type};

use crate::config::Protocol;

/// Listen backlog for TCP listeners; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 4096;

/// The `SO_REUSEPORT` group for one listener: socket `i` belongs to worker `i`.
#[derive(Debug)]
pub struct ListenerSockets {
    pub address: SocketAddr,
    pub protocol: Protocol,
    fds: Box<[OwnedFd]>,
}

impl ListenerSockets {
    /// Bind `workers` sockets to `address`. All or nothing: on error none stay bound.
    pub fn bind(address: SocketAddr, protocol: Protocol, workers: usize) -> io::Result<Self> {
        if address.port() != 0 {
            probe_free(address, protocol)?;
        }
        let first = bind_one(address, protocol)?;
        // With port 0 the first bind picks the port; the rest join that port's group.
        let address = local_addr(&first)?;
        let mut fds = vec![first];
        for _ in 1..workers.max(1) {
            fds.push(bind_one(address, protocol)?);
        }
        let fds = fds.into_boxed_slice();
        Ok(ListenerSockets {
            address,
            protocol,
            fds,
        })
    }

    /// The socket worker `worker` serves.
    pub fn fd(&self, worker: usize) -> BorrowedFd<'_> {
        self.fds[worker % self.fds.len()].as_fd()
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

fn domain(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// `SO_REUSEPORT` would let us join another process's group on `address` (same uid) and
/// silently split its traffic, e.g. a second daemon started with the same config. A bind
/// without `SO_REUSEPORT` fails while anyone holds the address: then refuse it.
fn probe_free(address: SocketAddr, protocol: Protocol) -> io::Result<()> {
    let ty = match protocol {
        Protocol::Tcp | Protocol::Http => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let s = Socket::new(domain(&address), ty.cloexec(), None)?;
    // TCP: lingering TIME_WAIT connections of an earlier run do not count. (UDP has none,
    // and there SO_REUSEADDR would let the probe share the address.)
    if protocol != Protocol::Udp {
        s.set_reuse_address(true)?;
    }
    if address.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&address.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                format!("{e}: another process (or another tickmesh) is using it"),
            )
        } else {
            e
        }
    })
}

fn bind_one(address: SocketAddr, protocol: Protocol) -> io::Result<OwnedFd> {
    let ty = match protocol {
        Protocol::Tcp | Protocol::Http => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let s = Socket::new(domain(&address), ty.nonblocking().cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if address.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&address.into())?;
    if protocol != Protocol::Udp {
        s.listen(BACKLOG)?;
    }
    Ok(s.into())
}

/// A non-blocking, close-on-exec TCP socket for an upstream connect, with `TCP_NODELAY`.
pub fn upstream_tcp_socket(peer: &SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(domain(peer), Type::STREAM.nonblocking().cloexec(), None)?;
    s.set_tcp_nodelay(true)?;
    Ok(s.into())
}

/// A non-blocking UDP socket connected to `peer` (one per client session).
pub fn upstream_udp_socket(peer: &SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(domain(peer), Type::DGRAM.nonblocking().cloexec(), None)?;
    s.connect(&(*peer).into())?;
    Ok(s.into())
}

/// `TCP_NODELAY` on an accepted socket.
pub fn set_nodelay(fd: &impl AsFd) -> io::Result<()> {
    SockRef::from(fd).set_tcp_nodelay(true)
}

pub fn local_addr(fd: &impl AsFd) -> io::Result<SocketAddr> {
    inet(SockRef::from(fd).local_addr()?)
}

pub fn peer_addr(fd: &impl AsFd) -> io::Result<SocketAddr> {
    inet(SockRef::from(fd).peer_addr()?)
}

fn inet(a: socket2::SockAddr) -> io::Result<SocketAddr> {
    a.as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

/// The pending error of a socket (`SO_ERROR`), e.g. after a non-blocking connect.
pub fn take_error(fd: &impl AsFd) -> io::Result<Option<io::Error>> {
    SockRef::from(fd).take_error()
}

/// Keeps listener sockets bound across applies: a listener whose protocol and address
/// are unchanged keeps its sockets (and its accept queue) through a route-table swap.
pub struct SocketPool {
    workers: usize,
    /// Weak: a group stays bound exactly as long as some route table (or a worker still
    /// cancelling its accept on it) holds it; the pool only finds it again for reuse.
    bound: HashMap<(Protocol, SocketAddr), Weak<ListenerSockets>>,
    /// Port-0 listeners by name: the port the kernel picked stays theirs through every
    /// recompile (an apply elsewhere, a DNS refresh) while the listener keeps port 0.
    ephemeral: HashMap<(Box<str>, Protocol, SocketAddr), Weak<ListenerSockets>>,
}

impl SocketPool {
    pub fn new(workers: usize) -> Self {
        SocketPool {
            workers: workers.max(1),
            bound: HashMap::new(),
            ephemeral: HashMap::new(),
        }
    }

    /// The sockets of listener `name` on `address`, binding them if no live table holds
    /// them. Port 0 binds a port of the listener's own once and keeps it while the
    /// listener, under that name, stays on port 0; naming the port it got keeps it too.
    pub fn get_or_bind(
        &mut self,
        name: &str,
        address: SocketAddr,
        protocol: Protocol,
    ) -> io::Result<Arc<ListenerSockets>> {
        let ephemeral = address.port() == 0;
        if ephemeral {
            let key = (Box::<str>::from(name), protocol, address);
            if let Some(s) = self.ephemeral.get(&key).and_then(Weak::upgrade) {
                return Ok(s);
            }
        } else if let Some(s) = self.bound.get(&(protocol, address)).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let s = Arc::new(ListenerSockets::bind(address, protocol, self.workers)?);
        self.bound.insert((protocol, s.address), Arc::downgrade(&s));
        if ephemeral {
            self.ephemeral
                .insert((name.into(), protocol, address), Arc::downgrade(&s));
        }
        Ok(s)
    }

    /// Forget groups that have closed.
    pub fn prune(&mut self) {
        self.bound.retain(|_, s| s.strong_count() > 0);
        self.ephemeral.retain(|_, s| s.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_reuses_live_groups_and_never_keeps_a_dropped_one_bound() {
        let mut pool = SocketPool::new(2);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = pool.get_or_bind("a", any, Protocol::Tcp).unwrap();
        let b = pool.get_or_bind("a", a.address, Protocol::Tcp).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "a live group is reused");
        let again = pool.get_or_bind("a", any, Protocol::Tcp).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "a port-0 listener keeps its port");
        let c = pool.get_or_bind("c", any, Protocol::Tcp).unwrap();
        assert_ne!(a.address, c.address, "another port-0 listener binds anew");
        let port = a.address;
        drop((a, b, again));
        // The last table let go: the port is free at once, with no prune needed.
        std::net::TcpListener::bind(port).expect("the port was released");
        pool.prune();
        assert_eq!(pool.bound.len(), 1);
    }

    #[test]
    fn a_second_group_on_a_held_address_is_refused() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let first = ListenerSockets::bind("127.0.0.1:0".parse().unwrap(), protocol, 2).unwrap();
            assert_eq!(first.len(), 2);
            let e = ListenerSockets::bind(first.address, protocol, 2).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{protocol}: {e}");
            assert!(e.to_string().contains("another process"), "{e}");
            drop(first);
        }
    }
}
