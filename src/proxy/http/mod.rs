//! The HTTP/1.1 proxy: [`codec`] frames and validates messages; [`conn`] is the
//! per-connection state machine the engines drive, like the L4 relay.
//!
//! Must never block, never buffer a body whole (bodies stream through bounded pool
//! buffers), and never trust a peer's framing it did not validate.

pub mod codec;
pub mod conn;
