//! Always-on agents (`manifests/persistent`): which target nodes run one, found through the
//! headless Service `orb8-agent`'s EndpointSlices, and the token their Secret holds. The client
//! reaches them exactly as it reaches ephemeral agents (port-forward to a loopback port, a
//! token on every call), and creates or deletes nothing for them.
//!
//! [`plan`] (pure) splits the target nodes by `--mode`: `ephemeral` starts pods everywhere as
//! before; `auto` uses the always-on agent where its endpoint is on the node (ready) and starts
//! a pod elsewhere; `persistent` uses only always-on agents and names the nodes without one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};

/// The DaemonSet's headless Service (`manifests/persistent/service.yaml`).
pub const SERVICE: &str = "orb8-agent";
/// The Secret holding the always-on agents' token, and its key.
pub const SECRET: &str = "orb8-agent-token";
/// The key of the token in [`SECRET`].
pub const SECRET_KEY: &str = "token";
/// The loopback port the always-on agents serve gRPC on (`daemonset.yaml`'s `--listen`).
pub const GRPC_PORT: u16 = 47010;
/// The label EndpointSlices carry for their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where a command's agents come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// The always-on agent where a node has one, an ephemeral pod elsewhere.
    #[default]
    Auto,
    /// Ephemeral pods on every target node.
    Ephemeral,
    /// Only always-on agents; nodes without one are left out.
    Persistent,
}

/// How one node's agent was reached, as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// A pod this command created.
    Ephemeral,
    /// The DaemonSet's agent.
    Persistent,
}

impl AgentMode {
    /// `ephemeral` or `persistent`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Ephemeral => "ephemeral",
            AgentMode::Persistent => "persistent",
        }
    }
}

/// The always-on agent pod of each node whose endpoint is ready, from the Service's slices.
pub fn agents_by_node(slices: &[EndpointSlice]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in slices.iter().flat_map(|s| s.endpoints.iter()) {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        if let (true, Some(node), Some(pod)) = (ready, e.node_name.clone(), pod) {
            out.entry(node)
                .and_modify(|p: &mut String| {
                    if pod < *p {
                        *p = pod.clone();
                    }
                })
                .or_insert(pod);
        }
    }
    out
}

/// Which agent each target node gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(node, always-on agent pod)`.
    pub persistent: Vec<(String, String)>,
    /// Nodes that get an ephemeral pod.
    pub ephemeral: Vec<String>,
    /// Nodes left out: `--mode persistent` and no always-on agent there.
    pub missing: Vec<String>,
}

/// Splits `nodes` by `mode`, given the always-on agents found ([`agents_by_node`]).
pub fn plan(mode: Mode, nodes: &[String], agents: &BTreeMap<String, String>) -> Plan {
    let mut p = Plan::default();
    for n in nodes {
        match (mode, agents.get(n)) {
            (Mode::Ephemeral, _) | (Mode::Auto, None) => p.ephemeral.push(n.clone()),
            (_, Some(pod)) => p.persistent.push((n.clone(), pod.clone())),
            (Mode::Persistent, None) => p.missing.push(n.clone()),
        }
    }
    p
}

/// Lists the always-on agents' EndpointSlices in `namespace`.
pub async fn discover(
    client: &Client,
    namespace: &str,
) -> Result<BTreeMap<String, String>, kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={SERVICE}"));
    let slices = api.list(&lp).await?;
    Ok(agents_by_node(&slices.items))
}

/// Why the always-on agents' token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The API server refused or failed (a missing Secret included).
    #[error("reading secret {namespace}/{SECRET}: {message}")]
    Api {
        /// The agent namespace.
        namespace: String,
        /// The API server's answer, in words.
        message: String,
    },
    /// The Secret has no usable `token`.
    #[error("secret {namespace}/{SECRET} has no key {SECRET_KEY:?} of at least 16 characters")]
    Missing {
        /// The agent namespace.
        namespace: String,
    },
}

/// The token in `secret`, when it holds one of at least 16 characters (the agent's minimum).
pub fn token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(SECRET_KEY)?;
    let t = std::str::from_utf8(&bytes.0).ok()?.trim();
    (t.len() >= 16).then(|| t.to_string())
}

/// Reads the always-on agents' token from their Secret in `namespace`.
pub async fn token(client: &Client, namespace: &str) -> Result<String, TokenError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api.get(SECRET).await.map_err(|e| TokenError::Api {
        namespace: namespace.to_string(),
        message: super::lifecycle::api_error("reading the always-on agents' token", &e),
    })?;
    token_of(&secret).ok_or_else(|| TokenError::Missing {
        namespace: namespace.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn endpoint(node: &str, pod: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec!["10.0.0.1".into()],
            node_name: Some(node.into()),
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ..Default::default()
        }
    }

    #[test]
    fn ready_endpoints_name_each_nodes_agent() {
        let found = agents_by_node(&[
            slice(vec![
                endpoint("n1", "orb8-agent-b", Some(true)),
                endpoint("n2", "orb8-agent-x", Some(false)),
            ]),
            slice(vec![
                endpoint("n1", "orb8-agent-a", None),
                endpoint("n3", "orb8-agent-c", Some(true)),
            ]),
        ]);
        assert_eq!(
            found,
            BTreeMap::from([
                ("n1".to_string(), "orb8-agent-a".to_string()),
                ("n3".to_string(), "orb8-agent-c".to_string()),
            ])
        );
    }

    #[test]
    fn each_mode_splits_the_nodes() {
        let nodes: Vec<String> = ["n1", "n2"].map(String::from).to_vec();
        let agents = BTreeMap::from([("n1".to_string(), "p1".to_string())]);
        assert_eq!(
            plan(Mode::Auto, &nodes, &agents),
            Plan {
                persistent: vec![("n1".into(), "p1".into())],
                ephemeral: vec!["n2".into()],
                missing: vec![],
            }
        );
        assert_eq!(
            plan(Mode::Ephemeral, &nodes, &agents).ephemeral,
            ["n1", "n2"]
        );
        assert_eq!(
            plan(Mode::Persistent, &nodes, &agents),
            Plan {
                persistent: vec![("n1".into(), "p1".into())],
                ephemeral: vec![],
                missing: vec!["n2".into()],
            }
        );
    }

    #[test]
    fn the_token_needs_sixteen_characters() {
        let secret = |t: &str| Secret {
            data: Some(std::collections::BTreeMap::from([(
                SECRET_KEY.to_string(),
                ByteString(t.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        assert_eq!(
            token_of(&secret("0123456789abcdef\n")).as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(token_of(&secret("short")), None);
        assert_eq!(token_of(&Secret::default()), None);
    }
}
