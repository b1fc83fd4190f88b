//! orb8's test kit: the test doubles and guards that orb8's test crates share (a dev-only
//! crate, never shipped).
//!
//! Everywhere: [`fake_agent`] (a real tonic server speaking `orb8.agent.v1` with canned data),
//! [`fake_apiserver`] (the API server's pod port-forward, for kube's real `Portforwarder`),
//! [`api_request`] (a request as an API-server double recorded it), [`preconditions`]
//! (root, built binaries, and saying `SKIPPED` where people look), and on unix
//! [`pod_resources`] (the kubelet's pod-resources API with GPU allocations).
//!
//! Linux only, for the privileged tests (root, real kernel): network namespaces, veth pairs
//! and cgroups the tests create and remove on drop ([`netns`], [`cgroup`]), traffic between
//! them ([`traffic`]), an AF_PACKET capture as oracle ([`capture`]), the processes the tests
//! start ([`processes`]), and a whole fake cluster whose kubelet runs real agents
//! ([`fake_cluster`]). Their items are re-exported here.

pub mod api_request;
pub mod fake_agent;
pub mod fake_apiserver;
pub mod preconditions;

#[cfg(unix)]
pub mod pod_resources;

#[cfg(target_os = "linux")]
pub mod capture;
#[cfg(target_os = "linux")]
pub mod cgroup;
#[cfg(target_os = "linux")]
pub mod fake_cluster;
#[cfg(target_os = "linux")]
mod guard;
#[cfg(target_os = "linux")]
pub mod netns;
#[cfg(target_os = "linux")]
pub mod pod_sandbox;
#[cfg(target_os = "linux")]
pub mod processes;
#[cfg(target_os = "linux")]
pub mod traffic;

#[cfg(target_os = "linux")]
pub use capture::{CapturedTcp, capture_tcp, flags};
#[cfg(target_os = "linux")]
pub use cgroup::{TestCgroup, cgroup2_mount};
#[cfg(target_os = "linux")]
pub use netns::{NetNs, Pod, Topology, Wire, run, spawn_in, unique};
#[cfg(target_os = "linux")]
pub use preconditions::{require_root, workspace_bin};
#[cfg(target_os = "linux")]
pub use processes::{
    PodProcess, SyscallLoad, WatchAgent, client_stdout, counter, counts, find_flows, one_flow,
    tcx_programs, wait_attached,
};
#[cfg(target_os = "linux")]
pub use traffic::{tcp_exchange, udp_receiver, udp_send};
