//! The control plane: Unix control socket, apply/delete/get/stats, persistence.
//! (lands with the control-plane work)
pub mod client;
