//! Ephemeral agents: one pod per target node for the length of one command.
//!
//! [`AgentPods`] is the teardown handle. Every pod name is recorded in it *before* the pod is
//! created, so whatever happens next (a failure, Ctrl-C dropping the start future, an error in
//! the command), [`AgentPods::delete_all`] removes everything this session may have created.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use super::lifecycle::{self, StartFailure};
use super::pod_spec::{self, AgentPodParams};

/// How agent pods are made.
#[derive(Clone, Debug)]
pub struct EphemeralConfig {
    /// Namespace of the agent pods.
    pub namespace: String,
    /// Agent image.
    pub image: String,
    /// `imagePullPolicy`.
    pub pull_policy: Option<String>,
    /// How long a pod may take to run.
    pub timeout: Duration,
    /// The agent exits after this long without a client.
    pub idle_timeout: Duration,
    /// The pod's `activeDeadlineSeconds`.
    pub deadline: Duration,
    /// Run privileged instead of with listed capabilities.
    pub privileged: bool,
    /// Mount what GPU telemetry needs.
    pub gpu: bool,
}

/// An agent pod that runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningAgent {
    /// The node.
    pub node: String,
    /// The pod's name (in [`EphemeralConfig::namespace`]).
    pub pod: String,
    /// The loopback port the agent listens on.
    pub port: u16,
}

/// The pods of one session, for teardown.
#[derive(Clone)]
pub struct AgentPods {
    api: Api<Pod>,
    names: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for AgentPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPods")
            .field("names", &self.names())
            .finish()
    }
}

impl AgentPods {
    /// No pods yet, in `namespace`.
    pub fn new(client: &Client, namespace: &str) -> Self {
        AgentPods {
            api: Api::namespaced(client.clone(), namespace),
            names: Arc::default(),
        }
    }

    fn record(&self, name: &str) {
        self.names
            .lock()
            .expect("pod names lock")
            .push(name.to_string());
    }

    /// Names of every pod this session may have created.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().expect("pod names lock").clone()
    }

    /// Deletes every pod this session may have created, concurrently, waiting up to `confirm`
    /// for each to be gone. Returns the ones that could not be deleted, with the reason.
    pub async fn delete_all(&self, confirm: Duration) -> Vec<(String, String)> {
        let names = std::mem::take(&mut *self.names.lock().expect("pod names lock"));
        let results = join_all(
            names
                .iter()
                .map(|n| lifecycle::delete_pod(&self.api, n, confirm)),
        )
        .await;
        names
            .into_iter()
            .zip(results)
            .filter_map(|(n, r)| r.err().map(|e| (n, e)))
            .collect()
    }
}

/// Creates one agent pod per node and waits for each to run, concurrently. `progress(node,
/// what)` hears what each pod waits for. A node whose pod fails comes back as an error with the
/// reason; the others are usable.
pub async fn start(
    pods: &AgentPods,
    config: &EphemeralConfig,
    session: &str,
    token: &str,
    port: u16,
    nodes: &[String],
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Vec<Result<RunningAgent, (String, StartFailure)>> {
    let starts = nodes.iter().enumerate().map(|(i, node)| {
        let params = AgentPodParams {
            session: session.to_string(),
            node: node.clone(),
            name: pod_spec::pod_name(session, i),
            namespace: config.namespace.clone(),
            image: config.image.clone(),
            pull_policy: config.pull_policy.clone(),
            port,
            token: token.to_string(),
            idle_timeout: config.idle_timeout,
            deadline: config.deadline,
            privileged: config.privileged,
            gpu: config.gpu,
        };
        pods.record(&params.name);
        async move {
            let pod = pod_spec::agent_pod(&params);
            lifecycle::create_and_wait(&pods.api, &pod, config.timeout, |what| {
                progress(&params.node, what)
            })
            .await
            .map(|_| RunningAgent {
                node: params.node.clone(),
                pod: params.name.clone(),
                port,
            })
            .map_err(|f| (params.node.clone(), f))
        }
    });
    join_all(starts).await
}
