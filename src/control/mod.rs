//! The control plane: the Unix control socket, the operations on the running config
//! (`apply`, `delete`, `get`, `stats`), and persistence of accepted configs.
//!
//! Owns the running [`Config`](crate::config::Config), its generation and the published
//! [`Routes`](crate::route::Routes). Never runs on, waits for, or locks anything a worker
//! touches: workers only load the snapshot this module stores. Its tokio runtime is
//! current-thread, on its own thread; tokio never runs on the data path.
//! Invariant: a rejected request changes nothing (table, config, generation, state file).

pub mod client;
#[doc(hidden)]
pub mod fuzz;
pub mod persist;
pub mod protocol;
mod server;
mod state;

pub use persist::StateDir;
pub use server::{ControlServer, ControlSocket};
pub use state::{ControlPlane, PacketTables, Rejected, StagedTables};
