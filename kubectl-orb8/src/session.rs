//! The agents one command works with: reached directly (`--agent`) or started here
//! (`--local`), connected and version-checked, and torn down at the end.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use futures::future::join_all;
use tonic::Streaming;

use crate::cli::GlobalArgs;
use crate::interrupt::{Interrupt, Interrupted};
use crate::k8s::cluster;
use crate::k8s::directory::LiveDirectory;
use crate::k8s::ephemeral::AgentPods;
use crate::local::{self, LocalAgent, LocalError};
use crate::merge::TraceMessage;
use crate::progress::{self, Progress};
use crate::timing::{Step, Timing};
use crate::transport::{Agent, AgentAddr, AgentError};

/// Connected agents, each with a unique display name, and the local agent if one was started.
#[derive(Debug, Default)]
pub struct Session {
    /// The agents, in the order given.
    pub agents: Vec<Agent>,
    /// A unique name per agent (its node name, or `node@address` when names repeat).
    pub names: Vec<String>,
    local: Option<LocalAgent>,
    cluster: Option<AgentPods>,
    /// Names for flow endpoints (cluster mode).
    pub directory: Option<LiveDirectory>,
    /// How long starting each agent took (`-v`).
    pub timing: Timing,
    /// How each agent was reached: `local`, `direct` (`--agent`), or in cluster mode
    /// `ephemeral` or `persistent`; in the order of [`Session::agents`].
    pub modes: Vec<&'static str>,
}

/// A trace running on one agent, its `started` message read ([`Session::open_traces`]).
#[derive(Debug)]
pub struct OpenTrace<'a, E: TraceMessage> {
    /// The agent's name in this session.
    pub node: String,
    /// The agent.
    pub agent: &'a Agent,
    /// What the agent's `started` message said.
    pub started: E::Started,
    /// The rest of the trace; the agent ends the trace when it is dropped.
    pub stream: Streaming<E>,
}

/// Names agents by node, adding the address where two report the same node.
pub fn unique_names(agents: &[(String, AgentAddr)]) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (node, _) in agents {
        *seen.entry(node.as_str()).or_default() += 1;
    }
    agents
        .iter()
        .map(|(node, addr)| {
            if seen.get(node.as_str()).copied().unwrap_or(0) > 1 {
                format!("{node}@{addr}")
            } else {
                node.clone()
            }
        })
        .collect()
}

impl Session {
    /// Starts or reaches the agents the flags name: `--local`, `--agent`, or else agent pods
    /// in the cluster (living at most `deadline`). With `require_agents` false (`version`), no
    /// agents is fine and no cluster is touched. Ctrl-C while opening cleans up what was
    /// started and returns [`Interrupted`].
    pub async fn open(
        global: &GlobalArgs,
        require_agents: bool,
        deadline: Duration,
        interrupt: &Interrupt,
    ) -> anyhow::Result<Session> {
        if !global.local && !global.local_args.is_empty() {
            anyhow::bail!("--local-arg is only used with --local");
        }
        if !global.local && global.agents.is_empty() {
            if !require_agents {
                return Ok(Session::default());
            }
            // Cluster mode handles Ctrl-C itself: its pods must be deleted, not dropped.
            let options = global.cluster_options();
            let timing = Timing::new(global.verbose);
            let c = cluster::open(
                &options,
                None,
                deadline,
                interrupt,
                &progress::warn,
                &timing,
            )
            .await?;
            let mut session = Session::new(c.agents, None);
            session.modes = c.modes.iter().map(|m| m.as_str()).collect();
            session.cluster = Some(c.pods);
            session.directory = Some(c.directory);
            session.timing = timing;
            return Ok(session);
        }
        let timing = Timing::new(global.verbose);
        let mut session = tokio::select! {
            s = Self::open_direct_or_local(global) => s?,
            () = interrupt.wait() => return Err(Interrupted.into()),
        };
        for name in &session.names {
            timing.mark(name, Step::AgentReady);
        }
        session.timing = timing;
        Ok(session)
    }

    async fn open_direct_or_local(global: &GlobalArgs) -> anyhow::Result<Session> {
        if global.local {
            return Self::open_local(global).await;
        }
        let progress = Progress::spinner(format!(
            "connecting to {} agent{}",
            global.agents.len(),
            if global.agents.len() == 1 { "" } else { "s" }
        ));
        let agents = connect_all(
            &global.agents,
            global.token.as_deref(),
            global.connect_timeout,
        )
        .await;
        progress.finish();
        Ok(Session::new(agents?, None))
    }

    async fn open_local(global: &GlobalArgs) -> anyhow::Result<Session> {
        let euid = local::effective_uid().ok_or(LocalError::Unsupported)?;
        local::check_root(euid)?;
        let exe = std::env::current_exe().ok();
        let binary = local::find_agent_binary(
            std::env::var_os(local::AGENT_BINARY_ENV),
            exe.as_deref(),
            std::env::var_os("PATH").as_deref(),
        )?;
        let progress = Progress::spinner("starting the local agent");
        let agent = LocalAgent::start(&binary, &global.local_args).await?;
        let addr = match agent.ready.listening.parse::<AgentAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let listening = agent.ready.listening.clone();
                agent.stop().await;
                return Err(LocalError::BadAddress { listening }.into());
            }
        };
        progress.set_message(format!("connecting to the local agent at {addr}"));
        let connected = Agent::connect(addr, Some(&agent.token), global.connect_timeout).await;
        progress.finish();
        match connected {
            Ok(a) => Ok(Session::new(vec![a], Some(agent))),
            Err(e) => {
                agent.stop().await;
                Err(e).context("local agent")
            }
        }
    }

    fn new(agents: Vec<Agent>, local: Option<LocalAgent>) -> Session {
        let pairs: Vec<(String, AgentAddr)> =
            agents.iter().map(|a| (a.node(), a.addr.clone())).collect();
        let mode = if local.is_some() { "local" } else { "direct" };
        Session {
            names: unique_names(&pairs),
            modes: vec![mode; agents.len()],
            agents,
            local,
            cluster: None,
            directory: None,
            timing: Timing::default(),
        }
    }

    /// Opens a trace on every agent at once with `open` and reads each one's first message,
    /// which must say the trace started. `rpc` names the call and `what` the trace (`drop
    /// trace`) in errors; the first failure, in the order of [`Session::agents`], is returned.
    pub async fn open_traces<'a, E, F, Fut>(
        &'a self,
        rpc: &'static str,
        what: &str,
        open: F,
    ) -> anyhow::Result<Vec<OpenTrace<'a, E>>>
    where
        E: TraceMessage,
        F: FnMut(&'a Agent) -> Fut,
        Fut: Future<Output = Result<Streaming<E>, AgentError>>,
    {
        let opened = join_all(self.agents.iter().map(open)).await;
        let mut traces = Vec::with_capacity(opened.len());
        for ((node, agent), stream) in self.names.iter().zip(&self.agents).zip(opened) {
            let mut stream = stream?;
            let started = match stream.next().await {
                Some(Ok(first)) => match first.into_started() {
                    Ok(started) => started,
                    Err(other) => anyhow::bail!("agent {node} began the {what} with {other:?}"),
                },
                Some(Err(status)) => {
                    return Err(AgentError::from_status(&agent.addr, rpc, &status).into());
                }
                None => anyhow::bail!("agent {node} ended the {what} before it started"),
            };
            traces.push(OpenTrace {
                node: node.clone(),
                agent,
                started,
                stream,
            });
        }
        Ok(traces)
    }

    /// The local agent's last stderr line, to explain why it went away.
    pub fn local_stderr_line(&self) -> Option<String> {
        self.local.as_ref().and_then(LocalAgent::last_stderr_line)
    }

    /// Stops the local agent or deletes the cluster's agent pods, whichever this session
    /// started; direct agents are left running.
    pub async fn close(self) {
        if let Some(local) = self.local {
            local.stop().await;
        }
        if let Some(pods) = self.cluster {
            cluster::teardown(&pods, &progress::warn).await;
        }
    }
}

/// Connects to every address at once; the first failure (in the order given) is returned.
pub async fn connect_all(
    addrs: &[AgentAddr],
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Vec<Agent>> {
    let results = join_all(
        addrs
            .iter()
            .map(|addr| Agent::connect(addr.clone(), token, timeout)),
    )
    .await;
    results
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_node_names_get_their_address() {
        let addr = |p| AgentAddr::Tcp {
            host: "127.0.0.1".into(),
            port: p,
        };
        let names = unique_names(&[
            ("a".into(), addr(1)),
            ("b".into(), addr(2)),
            ("a".into(), addr(3)),
        ]);
        assert_eq!(names, vec!["a@127.0.0.1:1", "b", "a@127.0.0.1:3"]);
    }
}
