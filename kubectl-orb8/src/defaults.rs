//! The client's defaults in one place: how long agents live without a client, how the client
//! talks to them (keep-alives, limits, timeouts), and where agent pods go. Flag defaults are
//! here as the text clap parses, so `--help` and the code cannot disagree.
//!
//! Imports nothing: every layer may read it.

use std::time::Duration;

/// How long an agent runs without any client before it exits by itself (`orb8-agent serve
/// --idle-timeout`): the backstop for a client that is killed before it can stop its agents.
/// Local agents get exactly this; cluster agents get [`cluster_idle_timeout`].
pub const AGENT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle timeout of cluster agent pods: [`AGENT_IDLE_TIMEOUT`] plus the pod start timeout
/// (`--timeout`). Why a second value: the client connects to the agents only once every node's
/// pod runs or has failed, so an agent on a quick node may wait up to the start timeout for
/// its first client, and must not exit while its siblings are still starting.
pub fn cluster_idle_timeout(start_timeout: Duration) -> Duration {
    AGENT_IDLE_TIMEOUT + start_timeout
}

/// Interval of HTTP/2 keep-alive pings on every connection to an agent (TCP, unix socket or
/// port-forward), idle or not, so a vanished agent or a broken forward is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a keep-alive ping may go unanswered before the connection counts as broken.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message accepted from an agent: a full flow table of a big node is several MiB,
/// more than tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How long a unary call (GetStatus, QueryFlows, ...) may take once connected.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// `--connect-timeout`: how long each agent may take to answer when connecting.
pub const CONNECT_TIMEOUT: &str = "5s";

/// `--timeout`: how long agent pods may take to start.
pub const POD_START_TIMEOUT: &str = "60s";

/// `flows --duration`: how long to collect before printing.
pub const FLOWS_DURATION: &str = "10s";
/// `gpu --interval`: per-process utilization window and `--watch` refresh period.
pub const GPU_INTERVAL: &str = "2s";

/// `--agent-namespace`: where agent pods run (created if missing).
pub const AGENT_NAMESPACE: &str = "orb8-system";

/// How long deleting waits for each agent pod to be gone.
pub const POD_DELETE_WAIT: Duration = Duration::from_secs(10);

/// How long a cluster agent that does not answer yet (still attaching its probes) is waited
/// for between connection attempts: [`CONNECT_RETRY_FIRST`] after the first, twice as long
/// after each next one, at most this.
pub const CONNECT_RETRY: Duration = Duration::from_millis(300);

/// The first wait between connection attempts to a cluster agent (see [`CONNECT_RETRY`]).
pub const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(50);

/// How long a local agent may take to print its ready line.
pub const LOCAL_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a local agent gets to exit after SIGTERM before it is killed.
pub const LOCAL_STOP_GRACE: Duration = Duration::from_secs(5);

/// `top`: how often the flow tables are read.
pub const TOP_INTERVAL: &str = "1s";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_agents_outwait_the_slowest_pod_start() {
        assert_eq!(
            cluster_idle_timeout(Duration::from_secs(60)),
            Duration::from_secs(90)
        );
        assert_eq!(cluster_idle_timeout(Duration::ZERO), AGENT_IDLE_TIMEOUT);
    }

    #[test]
    fn flag_defaults_parse_as_durations() {
        for text in [
            CONNECT_TIMEOUT,
            POD_START_TIMEOUT,
            FLOWS_DURATION,
            GPU_INTERVAL,
        ] {
            assert!(humantime::parse_duration(text).is_ok(), "{text}");
        }
        assert_eq!(
            humantime::parse_duration(POD_START_TIMEOUT).ok(),
            Some(Duration::from_secs(60))
        );
    }
}
