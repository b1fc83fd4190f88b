//! Why an agent could not be used: [`AgentError`] for every way of reaching one, with
//! [`PortForwardError`] for agents behind the API server's port-forward (whatever opens the
//! forward reports its failures in these terms), and the protocol version check.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

use orb8_proto::PROTOCOL_VERSION;
use tonic::{Code, Status};

/// Which side of a protocol mismatch has to be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// The agent speaks an older protocol.
    Agent,
    /// The agent speaks a newer protocol than this client.
    Client,
}

impl fmt::Display for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upgrade::Agent => f.write_str("upgrade the agent"),
            Upgrade::Client => f.write_str("upgrade kubectl-orb8"),
        }
    }
}

/// Checks an agent's protocol version against this client's; the error says who must upgrade.
pub fn check_protocol(agent_protocol: u32) -> Result<(), Upgrade> {
    match agent_protocol.cmp(&PROTOCOL_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(Upgrade::Agent),
        std::cmp::Ordering::Greater => Err(Upgrade::Client),
    }
}

/// Why an agent could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `--agent` got something that is not an address.
    #[error("bad agent address '{input}': {reason}")]
    InvalidAddress {
        /// What the user typed.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// Nothing answered at the address (refused, timed out, not gRPC).
    #[error("cannot reach agent {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What went wrong, in one line.
        reason: String,
    },
    /// The agent answered `Unauthenticated`.
    #[error("the agent at {addr} rejected the token (check --token or ORB8_TOKEN)")]
    Unauthenticated {
        /// The agent's address.
        addr: String,
    },
    /// The agent speaks another protocol version.
    #[error(
        "agent {addr} (node {node}, orb8-agent {agent_version}) speaks protocol {agent}, \
         kubectl-orb8 {} speaks protocol {client}: {upgrade}",
        env!("CARGO_PKG_VERSION")
    )]
    ProtocolMismatch {
        /// The agent's address.
        addr: String,
        /// The agent's node.
        node: String,
        /// The agent's own version.
        agent_version: String,
        /// The agent's protocol version.
        agent: u32,
        /// This client's protocol version.
        client: u32,
        /// Who must upgrade.
        upgrade: Upgrade,
    },
    /// The token contains characters gRPC metadata cannot carry.
    #[error("the token cannot be sent: it must be printable ASCII")]
    InvalidToken,
    /// Unix sockets are not available on this platform.
    #[error("cannot reach agent {addr}: unix sockets are not supported on this platform")]
    UnixUnsupported {
        /// The address tried.
        addr: String,
    },
    /// The port-forward to an agent pod failed.
    #[error(transparent)]
    PortForward(#[from] PortForwardError),
    /// A call failed for another reason.
    #[error("agent {addr}: {rpc} failed: {reason}")]
    Rpc {
        /// The agent's address.
        addr: String,
        /// Which RPC.
        rpc: &'static str,
        /// The status, in one line.
        reason: String,
    },
}

impl AgentError {
    /// Classifies a failed call to the agent at `addr`.
    /// A port-forward's own failure (the node's message, a deleted pod) wins over tonic's
    /// summary of it.
    pub fn from_status(addr: &impl fmt::Display, rpc: &'static str, status: &Status) -> Self {
        if let Some(failure) = find_port_forward_error(status) {
            return AgentError::PortForward(failure);
        }
        let addr = addr.to_string();
        match status.code() {
            Code::Unauthenticated => AgentError::Unauthenticated { addr },
            Code::Unavailable => AgentError::Unreachable {
                addr,
                reason: one_line(status.message()),
            },
            _ => AgentError::Rpc {
                addr,
                rpc,
                reason: crate::merge::status_text(status),
            },
        }
    }
}

/// `s` with line breaks turned into spaces.
pub(super) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The innermost cause of an error: for a refused connection, "Connection refused".
pub(super) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

/// What broke underneath a port-forward (kube's forwarder task or its request; kube does not
/// export a type for the former).
pub type ForwarderError = Arc<dyn StdError + Send + Sync>;

/// Why a port-forward to an agent pod failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortForwardError {
    /// The API server has no such pod (never created, already deleted or evicted).
    #[error("cannot port-forward to pod {namespace}/{pod}: the pod does not exist")]
    PodNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
    },
    /// The API server refused the user: port-forwarding needs `create` on `pods/portforward`.
    #[error(
        "cannot port-forward to pod {namespace}/{pod}: forbidden (needs create on pods/portforward): {message}"
    )]
    Forbidden {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// The API server's message.
        message: String,
    },
    /// The port-forward request failed otherwise (API server unreachable, pod not running,
    /// no websocket upgrade).
    #[error("cannot port-forward to pod {namespace}/{pod} port {port}: {reason}")]
    Open {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// The failure in one line (an API status by its message).
        reason: String,
        /// The error of the request.
        #[source]
        source: ForwarderError,
    },
    /// The port-forward opened, but the API server returned no stream for the port.
    #[error("port-forward to pod {namespace}/{pod} returned no stream for port {port}")]
    NoStream {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
    },
    /// The node reported an error on the port's error channel: usually nothing listens on
    /// the port inside the pod (the agent is not up, or has exited).
    #[error("port-forward to pod {namespace}/{pod} port {port} failed: {message}")]
    Remote {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// What the node said.
        message: String,
    },
    /// The port-forward closed before the agent said anything.
    #[error("port-forward to pod {namespace}/{pod} port {port} closed before the agent answered")]
    Closed {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
    },
    /// The port-forward connection to the API server broke.
    #[error("port-forward to pod {namespace}/{pod} port {port} broke: {source}")]
    Broken {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// kube's forwarding error.
        #[source]
        source: ForwarderError,
    },
    /// The port-forward opened, but gRPC could not start over it.
    #[error("cannot reach the agent in pod {namespace}/{pod} port {port}: {reason}")]
    Connect {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port asked for.
        port: u16,
        /// What went wrong, in one line.
        reason: String,
    },
}

/// An error and its causes in one line, each cause once.
pub fn chain_line(err: &(dyn StdError + 'static)) -> String {
    let mut line = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cur = e.source();
    }
    line.replace(['\n', '\r'], " ")
}

/// The first [`PortForwardError`] in an error's chain of causes.
pub fn find_port_forward_error(err: &(dyn StdError + 'static)) -> Option<PortForwardError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<PortForwardError>() {
            return Some(found.clone());
        }
        // io::Error hides its payload from `source()`: look inside.
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<PortForwardError>())
        {
            return Some(found.clone());
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_mismatch_says_who_upgrades() {
        assert_eq!(check_protocol(PROTOCOL_VERSION), Ok(()));
        assert_eq!(check_protocol(PROTOCOL_VERSION - 1), Err(Upgrade::Agent));
        assert_eq!(check_protocol(PROTOCOL_VERSION + 1), Err(Upgrade::Client));
        let err = AgentError::ProtocolMismatch {
            addr: "127.0.0.1:1".into(),
            node: "n".into(),
            agent_version: "9.0.0".into(),
            agent: PROTOCOL_VERSION + 1,
            client: PROTOCOL_VERSION,
            upgrade: Upgrade::Client,
        };
        assert!(err.to_string().ends_with(": upgrade kubectl-orb8"), "{err}");
    }

    #[test]
    fn port_forward_failures_are_found_through_io_errors_and_causes() {
        let failure = PortForwardError::Closed {
            namespace: "ns".into(),
            pod: "p".into(),
            port: 1,
        };
        let wrapped = io::Error::other(failure.clone());
        let found = find_port_forward_error(&wrapped).expect("inside io::Error");
        assert_eq!(
            found.to_string(),
            "port-forward to pod ns/p port 1 closed before the agent answered"
        );
        let status = Status::from_error(Box::new(io::Error::other(failure)));
        let err = AgentError::from_status(&"127.0.0.1:1", "GetStatus", &status);
        assert!(
            matches!(
                err,
                AgentError::PortForward(PortForwardError::Closed { port: 1, .. })
            ),
            "{err:?}"
        );
        assert!(find_port_forward_error(&io::Error::other("plain")).is_none());
    }
}
