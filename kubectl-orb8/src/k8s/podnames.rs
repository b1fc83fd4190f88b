//! Names for the pod UIDs and container IDs that agents read from GPU processes' cgroups: the
//! pods on the given nodes, listed once from the API server.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use super::lifecycle::api_error;
use crate::gpu::{PodName, PodNames};

/// The container ID without its runtime prefix (`containerd://abc` → `abc`).
pub fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// The name entry of one pod, by its UID.
pub fn entry(pod: &Pod) -> Option<(String, PodName)> {
    let uid = pod.metadata.uid.clone()?;
    let containers: HashMap<String, String> = pod
        .status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            c.container_id
                .as_deref()
                .map(|id| (bare_container_id(id).to_string(), c.name.clone()))
        })
        .collect();
    Some((
        uid,
        PodName {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            containers,
        },
    ))
}

/// Every pod on `nodes`, by UID.
pub async fn on_nodes(client: &Client, nodes: &[String]) -> Result<PodNames, String> {
    let api: Api<Pod> = Api::all(client.clone());
    let mut names = PodNames::new();
    for node in nodes {
        let list = api
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| api_error("listing the pods of the GPU nodes", &e))?;
        names.extend(list.items.iter().filter_map(entry));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_named_by_uid_and_containers_by_bare_id() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "train-0", "namespace": "ml", "uid": "u-1"},
            "status": {"containerStatuses": [
                {"name": "trainer", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "containerID": "containerd://abc"},
                {"name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
            ]}
        }))
        .unwrap();
        let (uid, name) = entry(&pod).unwrap();
        assert_eq!(uid, "u-1");
        assert_eq!(
            (name.namespace.as_str(), name.name.as_str()),
            ("ml", "train-0")
        );
        assert_eq!(name.containers.len(), 1);
        assert_eq!(name.containers["abc"], "trainer");
        assert_eq!(bare_container_id("cri-o://x"), "x");
        assert_eq!(bare_container_id("x"), "x");
    }
}
