//! Where agents are: `--agent` addresses (`host:port`, `unix:/path`), parsed and printed, and
//! the pod ports reached through the API server's port-forward.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::error::AgentError;

/// Where an agent listens: `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentAddr {
    /// A TCP address; `host` is a name, an IPv4 address or a bracket-less IPv6 address.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix domain socket path.
    Unix(PathBuf),
    /// A port inside a pod, reached through a [`PodConnector`](super::channel::PodConnector)
    /// (the API server's port-forward); never parsed from `--agent`.
    PortForward {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port inside the pod.
        port: u16,
    },
}

impl FromStr for AgentAddr {
    type Err = AgentError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| AgentError::InvalidAddress {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("expected unix:/path/to/socket"));
            }
            return Ok(AgentAddr::Unix(PathBuf::from(path)));
        }
        let s = s.strip_prefix("http://").unwrap_or(s);
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port or unix:/path"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?
        } else if host.contains(':') {
            return Err(bad("write IPv6 addresses in brackets: [fd00::1]:port"));
        } else {
            host
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        Ok(AgentAddr::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            AgentAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            AgentAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            AgentAddr::PortForward {
                namespace,
                pod,
                port,
            } => write!(f, "pod/{namespace}/{pod}:{port}"),
        }
    }
}

/// The pod port a port-forward reaches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodPort {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The port inside the pod.
    pub port: u16,
}

impl PodPort {
    /// The pod port `port` of `namespace/pod`.
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>, port: u16) -> PodPort {
        PodPort {
            namespace: namespace.into(),
            pod: pod.into(),
            port,
        }
    }

    /// The address an agent reached here is known by.
    pub fn agent_addr(&self) -> AgentAddr {
        AgentAddr::PortForward {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            port: self.port,
        }
    }
}

impl fmt::Display for PodPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} port {}", self.namespace, self.pod, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_addresses() {
        let tcp = |h: &str, p| AgentAddr::Tcp {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            "127.0.0.1:7000".parse::<AgentAddr>().ok(),
            Some(tcp("127.0.0.1", 7000))
        );
        assert_eq!(
            "node-1:443".parse::<AgentAddr>().ok(),
            Some(tcp("node-1", 443))
        );
        assert_eq!("[::1]:9".parse::<AgentAddr>().ok(), Some(tcp("::1", 9)));
        assert_eq!(
            "http://localhost:9".parse::<AgentAddr>().ok(),
            Some(tcp("localhost", 9))
        );
        assert_eq!(
            "unix:/run/orb8.sock".parse::<AgentAddr>().ok(),
            Some(AgentAddr::Unix("/run/orb8.sock".into()))
        );
        assert_eq!(tcp("::1", 9).to_string(), "[::1]:9");
        assert_eq!(
            AgentAddr::Unix("/run/a.sock".into()).to_string(),
            "unix:/run/a.sock"
        );
        for bad in [
            "localhost",
            "host:0",
            "host:99999",
            ":80",
            "::1:80",
            "unix:",
            "[::1:80",
        ] {
            assert!(bad.parse::<AgentAddr>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn pod_ports_name_their_agent() {
        let p = PodPort::new("orb8-system", "orb8-agent-x-0", 21000);
        assert_eq!(p.to_string(), "orb8-system/orb8-agent-x-0 port 21000");
        assert_eq!(
            p.agent_addr().to_string(),
            "pod/orb8-system/orb8-agent-x-0:21000"
        );
    }
}
