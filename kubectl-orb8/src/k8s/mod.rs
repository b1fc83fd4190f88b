//! Cluster mode: which nodes, the agent pods on them, and reaching them.

pub mod client;
pub mod cluster;
pub mod directory;
pub mod ephemeral;
pub mod lifecycle;
pub mod persistent;
pub mod pod_spec;
pub mod podnames;
pub mod podtarget;
pub mod portforward;
pub mod reap;
pub mod target;
