//! Cluster mode for one command: choose the nodes (naming those left out), start an agent pod
//! on each, reach each through a port-forward, and hand back connected agents plus the teardown
//! handle. Meanwhile, finished agent pods of gone sessions are removed ([`super::reap`]) and
//! that is said in one line.
//!
//! From the moment the first pod may exist, every path out of here either returns the
//! [`AgentPods`] handle to the caller (who deletes the pods when the command ends) or deletes
//! the pods itself first: errors, nodes that failed, and Ctrl-C alike.

use std::time::{Duration, Instant};

use kube::Client;

use super::client::KubeAccess;
use super::directory::{self, LiveDirectory};
use super::ephemeral::{self, AgentPods, EphemeralConfig, RunningAgent};
use super::lifecycle;
use super::persistent::{self, AgentMode, Mode};
use super::pod_spec;
use super::portforward;
use super::reap;
use super::target::{self, TargetSpec};
use crate::defaults::{CONNECT_RETRY, CONNECT_RETRY_FIRST, POD_DELETE_WAIT, cluster_idle_timeout};
use crate::interrupt::{Interrupt, Interrupted};
use crate::progress::NodeProgress;
use crate::timing::{Step, Timing};
use crate::transport::{Agent, AgentError, PodPort, PortForwardError};

/// Where warnings go: the caller decides how they are shown.
pub type Warn<'a> = &'a (dyn Fn(&str) + Sync);

/// What cluster mode needs to know, as plain values (the command line fills it in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Which cluster and the default namespace.
    pub access: KubeAccess,
    /// Observe every namespace: agents on every node.
    pub all_namespaces: bool,
    /// Only pods matching this label selector.
    pub selector: Option<String>,
    /// Run agents on these nodes, whatever runs there.
    pub nodes: Vec<String>,
    /// Namespace of the agent pods.
    pub agent_namespace: String,
    /// Agent image; the published one of this client's version when `None`.
    pub image: Option<String>,
    /// `imagePullPolicy` of the agent pods; the cluster's default when `None`.
    pub pull_policy: Option<String>,
    /// How long agent pods may take to start (and agents, then, to answer).
    pub start_timeout: Duration,
    /// How long each connection attempt to an agent may take.
    pub connect_timeout: Duration,
    /// Run agent pods privileged instead of with listed capabilities.
    pub privileged: bool,
    /// The session id the agent pods are labelled with; random when `None`.
    pub session: Option<String>,
    /// Always-on agents, ephemeral pods, or each where it fits ([`persistent::plan`]).
    pub mode: Mode,
    /// The command reads GPUs: agent pods mount the kubelet's pod-resources directory.
    pub gpu: bool,
    /// Ports ephemeral agent pods parse as DNS besides 53 (`trace dns --dns-port`).
    pub dns_ports: Vec<u16>,
}

/// Agents started in the cluster for one command.
pub struct ClusterAgents {
    /// Connected agents, one per node that came up.
    pub agents: Vec<Agent>,
    /// How each of [`ClusterAgents::agents`] was reached, in the same order.
    pub modes: Vec<AgentMode>,
    /// The pods to delete at the end.
    pub pods: AgentPods,
    /// Names for flow endpoints, kept current while the command runs.
    pub directory: LiveDirectory,
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

/// Starts agents for the command's selection. `deadline` bounds the pods' lives; warnings
/// (nodes left out, names that cannot be listed, pods left behind) go to `warn`; each node's
/// steps to `timing`.
pub async fn open(
    args: &ClusterOptions,
    pod: Option<String>,
    deadline: Duration,
    interrupt: &Interrupt,
    warn: Warn<'_>,
    timing: &Timing,
) -> anyhow::Result<ClusterAgents> {
    let (client, namespace) = tokio::select! {
        r = super::client::connect(&args.access) => r?,
        () = interrupt.wait() => return Err(Interrupted.into()),
    };
    let spec = TargetSpec {
        namespace,
        all_namespaces: args.all_namespaces,
        selector: args.selector.clone(),
        pod,
        nodes: args.nodes.clone(),
    };
    let tolerations = pod_spec::tolerations();
    let resolved = tokio::select! {
        r = target::resolve(&client, &spec, &tolerations) => r?,
        () = interrupt.wait() => return Err(Interrupted.into()),
    };
    for (node, why) in &resolved.skipped {
        warn(&format!("skipping node {node}: {why}"));
    }
    let always_on = match args.mode {
        Mode::Ephemeral => Default::default(),
        mode => match persistent::discover(&client, &args.agent_namespace).await {
            Ok(found) => found,
            Err(e) if mode == Mode::Persistent => anyhow::bail!(lifecycle::api_error(
                "looking for always-on agents (--mode persistent)",
                &e
            )),
            Err(e) => {
                warn(&format!(
                    "{}; using ephemeral agent pods",
                    lifecycle::api_error("looking for always-on agents", &e)
                ));
                Default::default()
            }
        },
    };
    let plan = persistent::plan(args.mode, &resolved.nodes, &always_on);
    for node in &plan.missing {
        warn(&format!(
            "skipping node {node}: no always-on agent runs there (--mode persistent starts none)"
        ));
    }
    let mut agents = Vec::new();
    let mut modes = Vec::new();
    let mut ephemeral_nodes = plan.ephemeral.clone();
    if !plan.persistent.is_empty() {
        let reached = tokio::select! {
            r = connect_persistent(&client, args, &plan.persistent) => r,
            () = interrupt.wait() => return Err(Interrupted.into()),
        };
        for (node, r) in reached {
            match r {
                Ok(a) => {
                    agents.push(a);
                    modes.push(AgentMode::Persistent);
                }
                Err(why) if args.mode == Mode::Auto => {
                    warn(&format!(
                        "node {node}: always-on agent unreachable ({why}); starting an ephemeral one"
                    ));
                    ephemeral_nodes.push(node);
                }
                Err(why) => warn(&format!("proceeding without node {node}: {why}")),
            }
        }
    }
    let pods = AgentPods::new(&client, &args.agent_namespace);
    if !ephemeral_nodes.is_empty() {
        match start_ephemeral(
            &client,
            args,
            &pods,
            &ephemeral_nodes,
            deadline,
            interrupt,
            warn,
            timing,
        )
        .await
        {
            Ok(started) => {
                modes.extend(started.iter().map(|_| AgentMode::Ephemeral));
                agents.extend(started);
            }
            Err(e) if e.is::<Interrupted>() || agents.is_empty() => {
                teardown(&pods, warn).await;
                return Err(e);
            }
            Err(e) => {
                teardown(&pods, warn).await;
                warn(&format!("{e:#}"));
            }
        }
    }
    if agents.is_empty() {
        anyhow::bail!(
            "no always-on agent on the target nodes ({}); install manifests/persistent or use --mode auto",
            plan.missing.join(", ")
        );
    }
    let selected = directory::selected_pods(&client, &spec).await;
    let directory = LiveDirectory::start(&client, selected, warn).await;
    Ok(ClusterAgents {
        agents,
        modes,
        pods,
        directory,
    })
}

/// Reaches each node's always-on agent through a port-forward with the token of their Secret.
async fn connect_persistent(
    client: &Client,
    args: &ClusterOptions,
    agents: &[(String, String)],
) -> Vec<(String, Result<Agent, String>)> {
    let token = match persistent::token(client, &args.agent_namespace).await {
        Ok(t) => t,
        Err(e) => {
            return agents
                .iter()
                .map(|(n, _)| (n.clone(), Err(e.to_string())))
                .collect();
        }
    };
    let connects = agents.iter().map(|(node, pod)| {
        let target = PodPort::new(&args.agent_namespace, pod.clone(), persistent::GRPC_PORT);
        let token = token.as_str();
        async move {
            let r = portforward::connect_agent(
                client.clone(),
                target,
                Some(token),
                args.connect_timeout,
            )
            .await
            .map_err(|e| format!("{e:#}"));
            (node.clone(), r)
        }
    });
    futures::future::join_all(connects).await
}

/// Ephemeral agent pods on `nodes`: the namespace, the pods, their connections; finished
/// pods of gone sessions are reaped meanwhile. The caller tears `pods` down on error.
#[allow(clippy::too_many_arguments)] // reason: the session's parts, and where it reports
async fn start_ephemeral(
    client: &Client,
    args: &ClusterOptions,
    pods: &AgentPods,
    nodes: &[String],
    deadline: Duration,
    interrupt: &Interrupt,
    warn: Warn<'_>,
    timing: &Timing,
) -> anyhow::Result<Vec<Agent>> {
    lifecycle::ensure_namespace(client, &args.agent_namespace)
        .await
        .map_err(|e| anyhow::anyhow!(lifecycle::api_error("preparing the agent namespace", &e)))?;
    let session = match &args.session {
        Some(s) => s.clone(),
        None => random_hex(4)?,
    };
    tokio::select! {
        (r, (reaped, failed)) = futures::future::join(
            start_and_connect(client, args, &session, pods, nodes, deadline, warn, timing),
            reap::reap(client, &args.agent_namespace, &session),
        ) => {
            if let Some(line) = reap::summary(&reaped) {
                warn(&line);
            }
            for f in failed {
                warn(&f);
            }
            r
        }
        () = interrupt.wait() => Err(Interrupted.into()),
    }
}

/// Deletes the session's pods, warning about any that could not be deleted.
pub async fn teardown(pods: &AgentPods, warn: Warn<'_>) {
    for (name, why) in pods.delete_all(POD_DELETE_WAIT).await {
        warn(&format!(
            "agent pod {name}: {why}; `kubectl orb8 cleanup` removes what is left"
        ));
    }
}

#[allow(clippy::too_many_arguments)] // reason: the session's parts, and where it reports
async fn start_and_connect(
    client: &Client,
    args: &ClusterOptions,
    session: &str,
    pods: &AgentPods,
    nodes: &[String],
    deadline: Duration,
    warn: Warn<'_>,
    timing: &Timing,
) -> anyhow::Result<Vec<Agent>> {
    let token = random_hex(16)?;
    // Below the kernel's ephemeral ports and the NodePort range: free on nearly every node.
    let port = 20000 + random_u16()? % 10000;
    let config = EphemeralConfig {
        namespace: args.agent_namespace.clone(),
        image: crate::image::agent_image(args.image.as_deref()),
        pull_policy: args.pull_policy.clone(),
        timeout: args.start_timeout,
        idle_timeout: cluster_idle_timeout(args.start_timeout),
        deadline,
        privileged: args.privileged,
        gpu: args.gpu,
        dns_ports: args.dns_ports.clone(),
    };
    let bars = NodeProgress::new(nodes, "creating the agent pod");
    let mut agents = Vec::new();
    let mut missing = Vec::new();
    // Each node on its own: its agent is connected to as soon as its pod runs, whatever the
    // other nodes' pods are doing.
    let connects = nodes.iter().enumerate().map(|(i, node)| {
        let bars = &bars;
        let token = token.as_str();
        let config = &config;
        async move {
            let progress = |node: &str, what: &str| bars.waiting(node, what);
            let started = ephemeral::start_one(
                pods, config, session, token, port, i, node, &progress, timing,
            )
            .await;
            match started {
                Ok(running) => {
                    bars.waiting(&running.node, "the agent to answer");
                    let node = running.node.clone();
                    let connect_until = Instant::now() + args.start_timeout;
                    match connect(
                        client,
                        &config.namespace,
                        running,
                        token,
                        connect_until,
                        args.connect_timeout,
                    )
                    .await
                    {
                        Ok(a) => {
                            timing.mark(&node, Step::AgentReady);
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
/// (the pod runs before the agent listens) until `until`: soon at first (the agent is usually
/// about to listen), then less often.
async fn connect(
    client: &Client,
    namespace: &str,
    running: RunningAgent,
    token: &str,
    until: Instant,
    attempt_timeout: Duration,
) -> anyhow::Result<Agent> {
    let target = PodPort::new(namespace, running.pod.clone(), running.port);
    let mut pause = CONNECT_RETRY_FIRST;
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
            Err(e) if Instant::now() + pause < until && retryable(&e) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(CONNECT_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a connection failure may go away by itself while the agent starts: nothing listens
/// on its port yet, or the port-forward closed before it answered.
fn retryable(e: &AgentError) -> bool {
    use PortForwardError as P;
    matches!(
        e,
        AgentError::Unreachable { .. }
            | AgentError::PortForward(
                P::Remote { .. } | P::Closed { .. } | P::Connect { .. } | P::NoStream { .. }
            )
    )
}
