//! Proxies: what happens to the bytes of a connection once an engine has accepted it.
//!
//! A proxy here is engine-agnostic: it is a state machine driven by I/O completions and
//! asks for I/O through the [`l4::Io`] trait, which each engine (`uring`, `epoll`)
//! implements. It never performs a blocking call, never allocates per message, and never
//! touches another worker's state. `l4` is TCP and UDP forwarding; `http` comes with L7.

pub mod http;
pub mod l4;
pub mod slot;
