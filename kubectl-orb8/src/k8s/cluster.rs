//! Cluster mode for one command: choose the nodes, start an agent pod on each, reach each
//! through a port-forward, and hand back connected agents plus the teardown handle.
//!
//! From the moment the first pod may exist, every path out of here either returns the
//! [`AgentPods`] handle to the caller (who deletes the pods when the command ends) or deletes
//! the pods itself first: errors, nodes that failed, and Ctrl-C alike.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kube::Client;

use super::ephemeral::{self, AgentPods, EphemeralConfig, RunningAgent};
use super::lifecycle;
use super::portforward::{self, PodPort};
use super::target::{self, TargetSpec};
use crate::cli::GlobalArgs;
use crate::commands::{Interrupted, warn};
use crate::interrupt::Interrupt;
use crate::transport::{Agent, AgentError};

/// How long deleting waits for each pod to be gone.
pub const DELETE_CONFIRM: Duration = Duration::from_secs(10);

/// Agents started in the cluster for one command.
pub struct ClusterAgents {
    /// Connected agents, one per node that came up.
    pub agents: Vec<Agent>,
    /// The pods to delete at the end.
    pub pods: AgentPods,
    /// Names for flow endpoints, kept current while the command runs.
    pub directory: super::directory::LiveDirectory,
}

/// Random lowercase hex of `bytes` bytes.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| anyhow::anyhow!("no randomness for the session token: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn random_u16() -> anyhow::Result<u16> {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b)
        .map_err(|e| anyhow::anyhow!("no randomness for the agent port: {e}"))?;
    Ok(u16::from_le_bytes(b))
}

/// Per-node progress bars on stderr (hidden when stderr is not a terminal).
struct NodeBars {
    _multi: MultiProgress,
    bars: Vec<(String, ProgressBar)>,
}

impl NodeBars {
    fn new(nodes: &[String]) -> NodeBars {
        use std::io::IsTerminal as _;
        let multi = if std::io::stderr().is_terminal() {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        let style = ProgressStyle::with_template("{spinner} {prefix}: {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = nodes
            .iter()
            .map(|n| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(n.clone());
                bar.set_message("creating the agent pod");
                bar.enable_steady_tick(Duration::from_millis(100));
                (n.clone(), bar)
            })
            .collect();
        NodeBars {
            _multi: multi,
            bars,
        }
    }

    fn say(&self, node: &str, what: &str) {
        if let Some((_, b)) = self.bars.iter().find(|(n, _)| n == node) {
            b.set_message(format!("waiting for {what}"));
        }
    }

    fn done(&self, node: &str, what: &str) {
        if let Some((_, b)) = self.bars.iter().find(|(n, _)| n == node) {
            b.finish_with_message(what.to_string());
        }
    }
}

impl Drop for NodeBars {
    fn drop(&mut self) {
        for (_, b) in &self.bars {
            b.finish_and_clear();
        }
    }
}

/// Starts agents for the command's selection. `deadline` bounds the pods' lives.
pub async fn open(
    global: &GlobalArgs,
    pod: Option<String>,
    deadline: Duration,
    interrupt: &Interrupt,
) -> anyhow::Result<ClusterAgents> {
    let args = &global.cluster;
    let (client, namespace) = tokio::select! {
        r = super::client::connect(args) => r?,
        () = interrupt.wait() => return Err(Interrupted.into()),
    };
    let spec = TargetSpec {
        namespace,
        all_namespaces: args.all_namespaces,
        selector: args.selector.clone(),
        pod,
        nodes: args.nodes.clone(),
    };
    let nodes = tokio::select! {
        r = target::resolve(&client, &spec) => r?,
        () = interrupt.wait() => return Err(Interrupted.into()),
    };
    lifecycle::ensure_namespace(&client, &args.agent_namespace)
        .await
        .map_err(|e| anyhow::anyhow!(lifecycle::api_error("preparing the agent namespace", &e)))?;
    let pods = AgentPods::new(&client, &args.agent_namespace);
    let started = tokio::select! {
        r = start_and_connect(&client, global, &pods, &nodes, deadline) => r,
        () = interrupt.wait() => Err(Interrupted.into()),
    };
    match started {
        Ok(agents) => {
            let selected = super::directory::selected_pods(&client, &spec).await;
            let directory = super::directory::LiveDirectory::start(&client, selected).await;
            Ok(ClusterAgents {
                agents,
                pods,
                directory,
            })
        }
        Err(e) => {
            teardown(&pods).await;
            Err(e)
        }
    }
}

/// Deletes the session's pods, warning about any that could not be deleted.
pub async fn teardown(pods: &AgentPods) {
    for (name, why) in pods.delete_all(DELETE_CONFIRM).await {
        warn(&format!(
            "agent pod {name}: {why}; `kubectl orb8 cleanup` removes what is left"
        ));
    }
}

async fn start_and_connect(
    client: &Client,
    global: &GlobalArgs,
    pods: &AgentPods,
    nodes: &[String],
    deadline: Duration,
) -> anyhow::Result<Vec<Agent>> {
    let args = &global.cluster;
    let session = match &args.session {
        Some(s) => s.clone(),
        None => random_hex(4)?,
    };
    let token = random_hex(16)?;
    // Below the kernel's ephemeral ports and the NodePort range: free on nearly every node.
    let port = 20000 + random_u16()? % 10000;
    let config = EphemeralConfig {
        namespace: args.agent_namespace.clone(),
        image: args
            .image
            .clone()
            .unwrap_or_else(super::pod_spec::default_image),
        pull_policy: args.image_pull_policy.clone(),
        timeout: args.timeout,
        idle_timeout: Duration::from_secs(60),
        deadline,
        privileged: args.privileged,
    };
    let bars = NodeBars::new(nodes);
    let started = ephemeral::start(
        pods,
        &config,
        &session,
        &token,
        port,
        nodes,
        &|node, what| bars.say(node, what),
    )
    .await;
    let mut agents = Vec::new();
    let mut missing = Vec::new();
    let connect_until = Instant::now() + args.timeout;
    let connects = started.into_iter().map(|r| {
        let bars = &bars;
        let token = token.as_str();
        let namespace = config.namespace.as_str();
        async move {
            match r {
                Ok(running) => {
                    bars.say(&running.node, "the agent to answer");
                    let node = running.node.clone();
                    match connect(
                        client,
                        namespace,
                        running,
                        token,
                        connect_until,
                        global.connect_timeout,
                    )
                    .await
                    {
                        Ok(a) => {
                            bars.done(&node, "ready");
                            Ok(a)
                        }
                        Err(e) => Err((node, format!("{e:#}"))),
                    }
                }
                Err((node, failure)) => Err((node, failure.to_string())),
            }
        }
    });
    for r in futures::future::join_all(connects).await {
        match r {
            Ok(a) => agents.push(a),
            Err((node, why)) => missing.push(format!("{node}: {why}")),
        }
    }
    drop(bars);
    if agents.is_empty() {
        anyhow::bail!("no agent could be started: {}", missing.join("; "));
    }
    for m in &missing {
        warn(&format!("proceeding without node {m}"));
    }
    Ok(agents)
}

/// Connects through a port-forward, retrying while the agent is still attaching its probes
/// (the pod runs before the agent listens) until `until`.
async fn connect(
    client: &Client,
    namespace: &str,
    running: RunningAgent,
    token: &str,
    until: Instant,
    attempt_timeout: Duration,
) -> anyhow::Result<Agent> {
    let target = PodPort::new(namespace, running.pod.clone(), running.port);
    loop {
        match portforward::connect_agent(
            client.clone(),
            target.clone(),
            Some(token),
            attempt_timeout,
        )
        .await
        {
            Ok(a) => return Ok(a),
            Err(e) if Instant::now() + Duration::from_millis(300) < until && retryable(&e) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a connection failure may go away by itself while the agent starts: nothing listens
/// on its port yet, or the port-forward closed before it answered.
fn retryable(e: &AgentError) -> bool {
    use super::portforward::PortForwardError as P;
    matches!(
        e,
        AgentError::Unreachable { .. }
            | AgentError::PortForward(
                P::Remote { .. } | P::Closed { .. } | P::Connect { .. } | P::NoStream { .. }
            )
    )
}
