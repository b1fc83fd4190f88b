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
use crate::timing::{Step, Timing};

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
    /// Ports parsed as DNS besides 53.
    pub dns_ports: Vec<u16>,
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
/// what)` hears what each pod waits for; `timing` when each was created and ran. A node whose
/// pod fails comes back as an error with the reason; the others are usable.
#[allow(clippy::too_many_arguments)] // reason: the pod's parameters, as `start_one` takes them
pub async fn start(
    pods: &AgentPods,
    config: &EphemeralConfig,
    session: &str,
    token: &str,
    port: u16,
    nodes: &[String],
    progress: &(dyn Fn(&str, &str) + Sync),
    timing: &Timing,
) -> Vec<Result<RunningAgent, (String, StartFailure)>> {
    let starts = nodes.iter().enumerate().map(|(i, node)| {
        start_one(
            pods, config, session, token, port, i, node, progress, timing,
        )
    });
    join_all(starts).await
}

/// Creates the agent pod of `node` (the `index`th node of the session) and waits until it
/// runs; its name is recorded for teardown before it is created.
#[allow(clippy::too_many_arguments)] // reason: each is a part of the pod or of its reporting
pub async fn start_one(
    pods: &AgentPods,
    config: &EphemeralConfig,
    session: &str,
    token: &str,
    port: u16,
    index: usize,
    node: &str,
    progress: &(dyn Fn(&str, &str) + Sync),
    timing: &Timing,
) -> Result<RunningAgent, (String, StartFailure)> {
    let params = AgentPodParams {
        session: session.to_string(),
        node: node.to_string(),
        name: pod_spec::pod_name(session, index),
        namespace: config.namespace.clone(),
        image: config.image.clone(),
        pull_policy: config.pull_policy.clone(),
        port,
        token: token.to_string(),
        idle_timeout: config.idle_timeout,
        deadline: config.deadline,
        privileged: config.privileged,
        gpu: config.gpu,
        dns_ports: config.dns_ports.clone(),
    };
    pods.record(&params.name);
    let pod = pod_spec::agent_pod(&params);
    let running = async {
        let created = lifecycle::create(&pods.api, &pod).await?;
        timing.mark(node, Step::PodCreated);
        let mut said = |what: &str| progress(node, what);
        lifecycle::wait_running(&pods.api, &created, config.timeout, &mut said).await?;
        timing.mark(node, Step::PodRunning);
        Ok(())
    };
    running
        .await
        .map(|()| RunningAgent {
            node: params.node.clone(),
            pod: params.name.clone(),
            port,
        })
        .map_err(|f| (params.node.clone(), f))
}
