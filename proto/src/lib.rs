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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::podresources as k;

    /// The field numbers are the kubelet's, not ours: a message encodes to the bytes the
    /// published `api.proto` gives it (tag = field number << 3 | wire type 2 for these).
    #[test]
    fn pod_resources_encode_with_the_published_field_numbers() {
        let devices = k::ContainerDevices {
            resource_name: "r".into(),
            device_ids: vec!["d".into()],
            topology: None,
        };
        // resource_name = 1, device_ids = 2.
        assert_eq!(devices.encode_to_vec(), b"\x0a\x01r\x12\x01d");
        let container = k::ContainerResources {
            name: "c".into(),
            devices: vec![devices.clone()],
            dynamic_resources: vec![k::DynamicResource {
                class_name: String::new(),
                claim_name: "x".into(),
                claim_namespace: "y".into(),
                claim_resources: vec![k::ClaimResource {
                    cdi_devices: vec![k::CdiDevice { name: "z".into() }],
                }],
            }],
            ..Default::default()
        };
        // name = 1, devices = 2, dynamic_resources = 5 { claim_name = 2, claim_namespace = 3,
        // claim_resources = 4 { cdi_devices = 1 { name = 1 } } }.
        assert_eq!(
            container.encode_to_vec(),
            b"\x0a\x01c\x12\x06\x0a\x01r\x12\x01d\x2a\x0d\x12\x01x\x1a\x01y\x22\x05\x0a\x03\x0a\x01z"
        );
        let list = k::ListPodResourcesResponse {
            pod_resources: vec![k::PodResources {
                name: "p".into(),
                namespace: "n".into(),
                containers: vec![],
            }],
        };
        // pod_resources = 1 { name = 1, namespace = 2 }.
        assert_eq!(list.encode_to_vec(), b"\x0a\x06\x0a\x01p\x12\x01n");
        let alloc = k::AllocatableResourcesResponse {
            devices: vec![devices],
            ..Default::default()
        };
        // devices = 1.
        assert_eq!(alloc.encode_to_vec(), b"\x0a\x06\x0a\x01r\x12\x01d");
    }
}
