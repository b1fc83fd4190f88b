//! `trace syscall POD [-c CONTAINER]`: the pod as the API server knows it (node, UID,
//! container IDs), turned into the agent's pod target. Reading the pod is I/O; choosing the
//! containers ([`containers_of`]) is pure.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt as _};
use orb8_proto::PodTarget;

use super::lifecycle::api_error;

/// A running pod's containers to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedPod {
    /// `namespace/name`.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// What the agent is asked to trace.
    pub target: PodTarget,
    /// Names of the containers traced.
    pub containers: Vec<String>,
    /// Set when several containers are traced because no `-c` was given.
    pub note: Option<String>,
}

/// Why a pod cannot be traced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodTargetError {
    /// No such pod.
    #[error("pod {0} not found")]
    NotFound(String),
    /// The pod is not running (yet, or any more).
    #[error("pod {pod} is {phase}: nothing runs in it to trace")]
    NotRunning {
        /// namespace/name.
        pod: String,
        /// Its phase.
        phase: String,
    },
    /// `-c` named a container the pod does not have.
    #[error("pod {pod} has no container {container:?} (it has: {have})")]
    NoSuchContainer {
        /// namespace/name.
        pod: String,
        /// The name asked for.
        container: String,
        /// The names it has.
        have: String,
    },
    /// The container(s) exist but none runs.
    #[error("no container of pod {0} is running")]
    NoRunningContainer(String),
    /// The API server refused or failed.
    #[error("{0}")]
    Api(String),
}

/// Chooses the containers of `pod` to trace: `container` alone, or every running one.
pub fn containers_of(pod: &Pod, container: Option<&str>) -> Result<TracedPod, PodTargetError> {
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    if phase != "Running" {
        return Err(PodTargetError::NotRunning { pod: name, phase });
    }
    let statuses = status.container_statuses.unwrap_or_default();
    let have: Vec<String> = statuses.iter().map(|c| c.name.clone()).collect();
    let chosen: Vec<_> = match container {
        Some(c) => {
            let s: Vec<_> = statuses.iter().filter(|s| s.name == c).collect();
            if s.is_empty() {
                return Err(PodTargetError::NoSuchContainer {
                    pod: name,
                    container: c.to_string(),
                    have: have.join(", "),
                });
            }
            s
        }
        None => statuses.iter().collect(),
    };
    let running: Vec<(String, String)> = chosen
        .iter()
        .filter(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .is_some()
        })
        .filter_map(|s| {
            let id = s.container_id.as_deref()?;
            // "containerd://<id>", "cri-o://<id>", "docker://<id>"
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            Some((s.name.clone(), id.to_string()))
        })
        .collect();
    if running.is_empty() {
        return Err(PodTargetError::NoRunningContainer(name));
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let note = (container.is_none() && running.len() > 1).then(|| {
        let names: Vec<&str> = running.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "pod {name} has {} containers ({}): tracing all of them; use -c CONTAINER for one",
            running.len(),
            names.join(", ")
        )
    });
    Ok(TracedPod {
        target: PodTarget {
            pod_uid: pod.uid().unwrap_or_default(),
            container_ids: running.iter().map(|(_, id)| id.clone()).collect(),
            name: name.clone(),
        },
        containers: running.into_iter().map(|(n, _)| n).collect(),
        name,
        node,
        note,
    })
}

/// Reads the pod and chooses its containers.
pub async fn lookup(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<TracedPod, PodTargetError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let p = api
        .get_opt(pod)
        .await
        .map_err(|e| PodTargetError::Api(api_error("reading the pod", &e)))?
        .ok_or_else(|| PodTargetError::NotFound(format!("{namespace}/{pod}")))?;
    containers_of(&p, container)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "checkout-7f9c", "namespace": "shop", "uid": "u-1"},
            "spec": {"nodeName": "node-3", "containers": []},
            "status": {"phase": phase, "containerStatuses": containers},
        }))
        .unwrap()
    }

    fn running(name: &str, id: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "i", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": id, "state": {"running": {}}})
    }

    #[test]
    fn all_running_containers_or_the_named_one() {
        let p = pod(
            "Running",
            serde_json::json!([
                running("app", "containerd://aaa"),
                running("proxy", "cri-o://bbb")
            ]),
        );
        let t = containers_of(&p, None).unwrap();
        assert_eq!(t.node, "node-3");
        assert_eq!(t.target.pod_uid, "u-1");
        assert_eq!(t.target.container_ids, vec!["aaa", "bbb"]);
        assert_eq!(
            t.note.as_deref(),
            Some(
                "pod shop/checkout-7f9c has 2 containers (app, proxy): tracing all of them; use -c CONTAINER for one"
            )
        );
        let t = containers_of(&p, Some("proxy")).unwrap();
        assert_eq!(
            (t.target.container_ids, t.containers, t.note),
            (vec!["bbb".to_string()], vec!["proxy".to_string()], None)
        );
        assert_eq!(
            containers_of(&p, Some("db")).unwrap_err().to_string(),
            "pod shop/checkout-7f9c has no container \"db\" (it has: app, proxy)"
        );
    }

    #[test]
    fn pods_that_do_not_run_are_refused() {
        let p = pod("Pending", serde_json::json!([]));
        assert_eq!(
            containers_of(&p, None).unwrap_err().to_string(),
            "pod shop/checkout-7f9c is Pending: nothing runs in it to trace"
        );
        let waiting = serde_json::json!([{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]);
        assert_eq!(
            containers_of(&pod("Running", waiting), None).unwrap_err(),
            PodTargetError::NoRunningContainer("shop/checkout-7f9c".into())
        );
    }
}
