//! Cluster mode: which nodes, the agent pods on them, and reaching them.

pub mod ephemeral;
pub mod lifecycle;
pub mod pod_spec;
pub mod target;
pub mod client;
