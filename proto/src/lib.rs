//! `orb8.agent.v1`: the gRPC protocol between `kubectl-orb8` and `orb8-agent`.
//!
//! The code is generated from `proto/orb8/agent/v1/agent.proto` by `build.rs` (protox, no
//! `protoc` needed). Both sides check [`PROTOCOL_VERSION`] through `GetStatus`. The kubelet's
//! pod-resources API, which the agent reads for GPU allocations, is [`podresources`].

#[allow(clippy::all, missing_docs, reason = "generated code")]
mod generated {
    tonic::include_proto!("orb8.agent.v1");
}

pub use generated::*;

/// The kubelet's pod-resources API, `v1` (`PodResourcesLister` on
/// `/var/lib/kubelet/pod-resources/kubelet.sock`): a Kubernetes contract whose field numbers
/// are the published ones, generated from `proto/k8s/podresources/v1/api.proto`.
#[allow(clippy::all, missing_docs, reason = "generated code")]
pub mod podresources {
    tonic::include_proto!("v1");
}

/// Where the kubelet serves [`podresources`].
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// Version of the wire protocol. Bumped only when an older peer would misread a newer one.
pub const PROTOCOL_VERSION: u32 = 1;

/// Request metadata key carrying the per-session token: `authorization: Bearer <token>`.
pub const TOKEN_METADATA_KEY: &str = "authorization";

/// Formats a token as the value of [`TOKEN_METADATA_KEY`].
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
