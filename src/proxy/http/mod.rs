//! The HTTP/1.1 proxy: [`codec`] frames and validates messages; [`conn`] is the
//! per-connection state machine the engines drive, like the L4 relay; [`shadow`] sends
//! mirrored copies of requests and holds the per-worker HTTP state; [`ratelimit`] is a
//! worker's table of local rate-limit buckets; [`fuzz`] holds the oracles of the HTTP
//! fuzz targets.
//!
//! Must never block, never buffer a body whole (bodies stream through bounded pool
//! buffers), and never trust a peer's framing it did not validate.

pub mod codec;
pub mod conn;
#[doc(hidden)]
pub mod fuzz;
pub mod pool;
pub mod ratelimit;
pub mod shadow;

pub use shadow::Worker;
