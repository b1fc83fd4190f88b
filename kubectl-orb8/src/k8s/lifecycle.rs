//! Agent pods' lives: namespace, create, wait until running (saying why not), delete, and the
//! `cleanup` listing. [`assess`] turns a pod's status into plain words and is pure.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt as _};

use super::pod_spec::{self, ANNOTATION_NODE};

/// Why an agent pod did not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartFailure {
    /// The image cannot be pulled (wrong name, no access, registry unreachable).
    #[error("cannot pull image {image}: {message}")]
    ImagePull {
        /// The image.
        image: String,
        /// The kubelet's reason and message.
        message: String,
    },
    /// The scheduler cannot place the pod on its node.
    #[error("unschedulable: {message}")]
    Unschedulable {
        /// The scheduler's message.
        message: String,
    },
    /// The container could not be created, or the agent exited.
    #[error("agent failed: {message}")]
    Failed {
        /// The container's termination message (the agent's last log lines) or the reason.
        message: String,
    },
    /// Nothing went wrong in time, but nothing went right either.
    #[error("timed out after {} waiting for {waiting_for}", humantime::format_duration(*after))]
    Timeout {
        /// How long it waited.
        after: Duration,
        /// What the pod was still waiting for.
        waiting_for: String,
    },
    /// Someone deleted the pod while it started.
    #[error("the pod was deleted before it started")]
    Deleted,
    /// The API server refused a request (RBAC, admission, quota) or could not be reached.
    #[error("{0}")]
    Api(String),
}

/// Where a starting pod stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Still starting; what it waits for, in words.
    Waiting(String),
    /// The agent container runs.
    Running,
    /// It will not start.
    Failed(StartFailure),
}

const IMAGE_PULL_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
const CREATE_FAILURE_REASONS: [&str; 3] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Reads a pod's status: running, failed (with the reason in words), or what it still waits for.
pub fn assess(pod: &Pod) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Waiting("the pod to be scheduled".into());
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return PodState::Failed(StartFailure::Unschedulable {
            message: c
                .message
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        });
    }
    let container = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.name == pod_spec::CONTAINER);
    if let Some(c) = container {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            let message = w.message.clone().unwrap_or_default();
            let both = if message.is_empty() {
                reason.clone()
            } else {
                format!("{reason}: {message}")
            };
            if IMAGE_PULL_REASONS.contains(&reason.as_str()) {
                return PodState::Failed(StartFailure::ImagePull {
                    image: c.image.clone(),
                    message: both,
                });
            }
            if CREATE_FAILURE_REASONS.contains(&reason.as_str()) {
                return PodState::Failed(StartFailure::Failed { message: both });
            }
            return PodState::Waiting(format!("the container to start ({reason})"));
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            let message = t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .unwrap_or_else(|| {
                    format!(
                        "{} (exit code {})",
                        t.reason.as_deref().unwrap_or("exited"),
                        t.exit_code
                    )
                });
            return PodState::Failed(StartFailure::Failed { message });
        }
        if state.and_then(|s| s.running.as_ref()).is_some() {
            return PodState::Running;
        }
    }
    match status.phase.as_deref() {
        Some("Failed") | Some("Succeeded") => {
            let said: Vec<&str> = [status.reason.as_deref(), status.message.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            let message = if said.is_empty() {
                "the pod ended before the agent ran".to_string()
            } else {
                said.join(": ")
            };
            PodState::Failed(StartFailure::Failed { message })
        }
        _ if conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True") =>
        {
            PodState::Waiting("the image to be pulled and the container created".into())
        }
        _ => PodState::Waiting("the pod to be scheduled".into()),
    }
}

/// Creates the agent namespace unless it exists.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<(), kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    match api
        .create(&PostParams::default(), &pod_spec::agent_namespace(name))
        .await
    {
        Ok(_) => Ok(()),
        // Another session created it meanwhile.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the pod and waits until its agent container runs, calling `progress` with what it
/// waits for whenever that changes. Does not delete the pod on failure: the caller does, on
/// every path.
pub async fn create_and_wait(
    api: &Api<Pod>,
    pod: &Pod,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Pod, StartFailure> {
    let created = create(api, pod).await?;
    wait_running(api, &created, timeout, &mut progress).await
}

/// Creates the pod; the API server's answer is the pod as created.
pub async fn create(api: &Api<Pod>, pod: &Pod) -> Result<Pod, StartFailure> {
    api.create(&PostParams::default(), pod)
        .await
        .map_err(|e| StartFailure::Api(api_error("creating the agent pod", &e)))
}

/// Waits (watching the pod) until [`assess`] says running or failed, or `timeout` passes.
pub async fn wait_running(
    api: &Api<Pod>,
    created: &Pod,
    timeout: Duration,
    progress: &mut impl FnMut(&str),
) -> Result<Pod, StartFailure> {
    let name = created.name_any();
    let deadline = Instant::now() + timeout;
    let mut version = created.resource_version().unwrap_or_else(|| "0".into());
    let mut current = created.clone();
    let mut said = String::new();
    loop {
        match assess(&current) {
            PodState::Running => return Ok(current),
            PodState::Failed(f) => return Err(f),
            PodState::Waiting(what) => {
                if what != said {
                    progress(&what);
                    said = what;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StartFailure::Timeout {
                after: timeout,
                waiting_for: said,
            });
        }
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(left.as_secs().clamp(1, 290) as u32);
        let step = async {
            let mut events = api.watch(&wp, &version).await?.boxed();
            while let Some(ev) = events.try_next().await? {
                match ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                        version = p.resource_version().unwrap_or(version.clone());
                        current = p;
                        if !matches!(assess(&current), PodState::Waiting(ref w) if *w == said) {
                            return Ok::<_, kube::Error>(false);
                        }
                    }
                    WatchEvent::Deleted(_) => return Ok(true),
                    WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                    // The version is too old (410 Gone): start again from the pod as it is.
                    WatchEvent::Error(_) => {
                        if let Some(p) = api.get_opt(&name).await? {
                            version = p.resource_version().unwrap_or_else(|| "0".into());
                            current = p;
                            return Ok(false);
                        }
                        return Ok(true);
                    }
                }
            }
            // The watch ended (server timeout); a short pause keeps a flapping server calm.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(false)
        };
        match tokio::time::timeout(left, step).await {
            Ok(Ok(true)) => return Err(StartFailure::Deleted),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(StartFailure::Api(api_error("watching the agent pod", &e))),
            Err(_) => {
                return Err(StartFailure::Timeout {
                    after: timeout,
                    waiting_for: said,
                });
            }
        }
    }
}

/// Deletes a pod and waits up to `confirm` until it is gone. A pod already gone is fine; a
/// refused delete, or a pod still there after `confirm` (its deletion goes on in the cluster),
/// comes back as one line saying so.
pub async fn delete_pod(api: &Api<Pod>, name: &str, confirm: Duration) -> Result<(), String> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(api_error("deleting the agent pod", &e)),
    }
    let end = Instant::now() + confirm;
    while Instant::now() < end {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(api_error("checking that the agent pod is gone", &e)),
        }
    }
    Err(format!(
        "still terminating after {}",
        humantime::format_duration(confirm)
    ))
}

/// An agent pod found by `cleanup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The node it was created for.
    pub node: String,
    /// Its session label.
    pub session: String,
    /// Its phase.
    pub phase: String,
}

/// Every agent pod orb8 created (of `session` alone, when given), in every namespace, found by
/// label.
pub async fn list_leftovers(
    client: &Client,
    session: Option<&str>,
) -> Result<Vec<Leftover>, kube::Error> {
    let api: Api<Pod> = Api::all(client.clone());
    let selector = match session {
        Some(s) => format!("{},{}={s}", pod_spec::SELECTOR, pod_spec::LABEL_SESSION),
        None => pod_spec::SELECTOR.to_string(),
    };
    let pods = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(pods
        .items
        .iter()
        .map(|p| Leftover {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            node: p
                .annotations()
                .get(ANNOTATION_NODE)
                .cloned()
                .unwrap_or_default(),
            session: p
                .labels()
                .get(pod_spec::LABEL_SESSION)
                .cloned()
                .unwrap_or_default(),
            phase: p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
        })
        .collect())
}

/// One line naming what failed, with the API server's own words (status code and message).
/// A 403 is either Pod Security admission refusing the agent pod (its message says
/// `violates PodSecurity`; the namespace's label is the fix) or RBAC (the ClusterRole is).
pub fn api_error(doing: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 && s.message.contains("violates PodSecurity") => {
            format!(
                "{doing}: rejected by Pod Security admission ({}); the agent namespace must allow \
                 privileged pods: label it pod-security.kubernetes.io/enforce=privileged (orb8 \
                 does when it creates the namespace) or pass --agent-namespace with one that does",
                s.message
            )
        }
        kube::Error::Api(s) if s.code == 403 => {
            format!(
                "{doing}: forbidden ({}); see manifests/clusterrole.yaml for the RBAC orb8 needs",
                s.message
            )
        }
        kube::Error::Api(s) => format!("{doing}: {} ({})", s.message, s.code),
        other => format!("{doing}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "agent", "image": "img"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn assess_reads_status_in_plain_words() {
        assert_eq!(
            assess(&pod(serde_json::json!({"phase": "Pending"}))),
            PodState::Waiting("the pod to be scheduled".into())
        );
        assert_eq!(
            assess(&pod(serde_json::json!({"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 1 Insufficient memory."}]}))),
            PodState::Failed(StartFailure::Unschedulable {
                message: "0/3 nodes are available: 1 Insufficient memory.".into()
            })
        );
        assert_eq!(
            assess(&pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [
                {"name": "agent", "image": "example.test/orb8:v9", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]})
            )),
            PodState::Failed(StartFailure::ImagePull {
                image: "example.test/orb8:v9".into(),
                message: "ImagePullBackOff: Back-off pulling image".into()
            })
        );
        assert_eq!(
            assess(&pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [
                {"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}]})
            )),
            PodState::Waiting("the container to start (ContainerCreating)".into())
        );
        assert_eq!(
            assess(&pod(
                serde_json::json!({"phase": "Failed", "containerStatuses": [
                {"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "reason": "Error",
                   "message": "orb8-agent: loading the eBPF object: Operation not permitted\n"}}}]})
            )),
            PodState::Failed(StartFailure::Failed {
                message: "orb8-agent: loading the eBPF object: Operation not permitted".into()
            })
        );
        assert_eq!(
            assess(&pod(
                serde_json::json!({"phase": "Running", "containerStatuses": [
                {"name": "agent", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-11-28T10:00:00Z"}}}]})
            )),
            PodState::Running
        );
        assert_eq!(
            assess(&pod(serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline"}))),
            PodState::Failed(StartFailure::Failed {
                message: "DeadlineExceeded: Pod was active on the node longer than the specified deadline".into()
            })
        );
    }

    fn status_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn pod_security_rejections_are_not_called_rbac() {
        let psa = status_error(
            403,
            "pods \"orb8-agent-x-0\" is forbidden: violates PodSecurity \"baseline:latest\": \
             host namespaces (hostNetwork=true, hostPID=true)",
        );
        let line = api_error("creating the agent pod", &psa);
        assert!(
            line.starts_with("creating the agent pod: rejected by Pod Security admission (pods"),
            "{line}"
        );
        assert!(
            line.contains("pod-security.kubernetes.io/enforce=privileged"),
            "{line}"
        );
        assert!(!line.contains("clusterrole"), "{line}");
        let rbac = status_error(
            403,
            "pods is forbidden: User \"dev\" cannot create resource \"pods\"",
        );
        let line = api_error("creating the agent pod", &rbac);
        assert!(line.contains("see manifests/clusterrole.yaml"), "{line}");
        assert!(!line.contains("Pod Security"), "{line}");
    }

    #[test]
    fn failures_read_as_one_line() {
        let t = StartFailure::Timeout {
            after: Duration::from_secs(60),
            waiting_for: "the pod to be scheduled".into(),
        };
        assert_eq!(
            t.to_string(),
            "timed out after 1m waiting for the pod to be scheduled"
        );
    }
}
