//! The command line: global kubectl-style flags and one subcommand per verb.
//!
//! Over 600 lines with its tests (about 400 without): every verb's flags stay in one file so
//! that `--help` and the flag tables can be read, and changed, in one place.

use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use orb8_flowspec::{Cidr, Direction, FlowFilterSpec, Protocol, SortKey};

use crate::defaults;
use crate::k8s::client::KubeAccess;
use crate::k8s::cluster::ClusterOptions;
use crate::k8s::persistent::Mode;
use crate::render::OutputFormat;
use crate::transport::AgentAddr;

/// Parses a duration such as `10s`, `1m30s` or `500ms`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    humantime::parse_duration(input.trim()).map_err(|e| format!("{e} (use e.g. 10s, 1m30s, 500ms)"))
}

/// Parses a session id: 1 to 20 lowercase letters, digits and inner dashes, so it fits a label
/// value and the agent pod names made from it.
pub fn parse_session(input: &str) -> Result<String, String> {
    let ok = (1..=20).contains(&input.len())
        && input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !input.starts_with('-')
        && !input.ends_with('-');
    if ok {
        Ok(input.to_string())
    } else {
        Err("use 1 to 20 lowercase letters, digits and inner dashes".into())
    }
}

fn parse_cidr(input: &str) -> Result<Cidr, String> {
    Cidr::parse(input).map_err(|e| e.to_string())
}

fn parse_protocol(input: &str) -> Result<Protocol, String> {
    Protocol::parse(input).map_err(|e| e.to_string())
}

/// `--direction`: the names are orb8-flowspec's; the help for each is here.
fn direction_parser() -> impl TypedValueParser<Value = Direction> {
    let help = |d: Direction| match d {
        Direction::Ingress => "Received by the pod (or, on an uplink, the node)",
        Direction::Egress => "Sent by the pod (or, on an uplink, the node)",
    };
    PossibleValuesParser::new(Direction::ALL.map(|d| PossibleValue::new(d.name()).help(help(d))))
        .try_map(|s| s.parse::<Direction>())
}

/// `--sort`: the names are orb8-flowspec's; the help for each is here.
fn sort_parser() -> impl TypedValueParser<Value = SortKey> {
    let help = |k: SortKey| match k {
        SortKey::Bytes => "Most bytes first",
        SortKey::Packets => "Most packets first",
        SortKey::Time => "Most recently seen first",
    };
    PossibleValuesParser::new(SortKey::ALL.map(|k| PossibleValue::new(k.name()).help(help(k))))
        .try_map(|s| s.parse::<SortKey>())
}

fn parse_agent(input: &str) -> Result<AgentAddr, String> {
    input
        .parse()
        .map_err(|e: crate::transport::AgentError| match e {
            crate::transport::AgentError::InvalidAddress { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// Repeatable global flags whose every occurrence counts, wherever it is written.
const REPEATABLE_GLOBALS: [&str; 3] = ["--agent", "--local-arg", "--node"];

/// Moves every `--agent`/`--local-arg` (and its value) before the subcommand, so that
/// `--agent A flows --agent B` means both agents: clap keeps only the last level's values of a
/// global flag given on two levels. Arguments after `--` are left alone.
pub fn hoist_repeatable_globals(args: Vec<OsString>) -> Vec<OsString> {
    let mut iter = args.into_iter();
    let mut out: Vec<OsString> = iter.next().into_iter().collect();
    let mut rest = Vec::new();
    while let Some(arg) = iter.next() {
        let text = arg.to_str().unwrap_or_default();
        if text == "--" {
            rest.push(arg);
            rest.extend(iter.by_ref());
            break;
        }
        if REPEATABLE_GLOBALS.contains(&text) {
            out.push(arg);
            out.extend(iter.next());
        } else if REPEATABLE_GLOBALS
            .iter()
            .any(|flag| text.strip_prefix(flag).is_some_and(|v| v.starts_with('=')))
        {
            out.push(arg);
        } else {
            rest.push(arg);
        }
    }
    out.extend(rest);
    out
}

/// `kubectl orb8`: eBPF network flows from orb8 agents.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-orb8",
    bin_name = "kubectl orb8",
    version,
    about = "eBPF network observability from orb8 agents",
    long_about = "eBPF network observability from orb8 agents.\n\n\
        By default agents run as short-lived pods on the nodes of the selected pods (-n, -l, -A, \
        --node) and are deleted when the command ends. --local starts one on this host instead \
        (needs root); --agent ADDR (repeatable, merged) uses agents someone already runs."
)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// An agent to use, as host:port or unix:/path (repeat for several; results are merged).
    #[arg(long = "agent", value_name = "ADDR", global = true, value_parser = parse_agent)]
    pub agents: Vec<AgentAddr>,

    /// Token sent to agents as "authorization: Bearer TOKEN".
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ORB8_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,

    /// Start orb8-agent on this host (found next to kubectl-orb8, or on PATH, or named by
    /// ORB8_AGENT_BINARY) and stop it at the end; needs root.
    #[arg(long, global = true, conflicts_with = "agents")]
    pub local: bool,

    /// An argument passed through to the local agent (repeat for several), e.g.
    /// --local-arg=--interface=eth0.
    #[arg(
        long = "local-arg",
        value_name = "ARG",
        global = true,
        allow_hyphen_values = true
    )]
    pub local_args: Vec<String>,

    /// Say on stderr how long each step took (cluster mode: per node, pod create sent, pod
    /// Running, port-forward ready, first answer).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,

    /// How long to wait for each agent to answer when connecting.
    #[arg(long, value_name = "DURATION", global = true, default_value = defaults::CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Cluster mode (used when neither --local nor --agent is given).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// How `kubectl orb8` reaches the cluster and starts agents there, kubectl style.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,

    /// Namespace of the pods to observe (default: the context's).
    #[arg(short = 'n', long, value_name = "NS", global = true)]
    pub namespace: Option<String>,

    /// Observe every namespace: agents on every node.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// Only pods matching this label selector (e.g. app=checkout).
    #[arg(short = 'l', long, value_name = "SELECTOR", global = true)]
    pub selector: Option<String>,

    /// Run agents on this node, whatever runs there (repeatable).
    #[arg(long = "node", value_name = "NAME", global = true)]
    pub nodes: Vec<String>,

    /// Namespace for the agent pods (created if missing, labelled for privileged pods).
    #[arg(long, value_name = "NS", global = true, default_value = defaults::AGENT_NAMESPACE)]
    pub agent_namespace: String,

    /// Agent image (default: the published orb8-agent image of this client's version).
    #[arg(long, value_name = "IMAGE", global = true)]
    pub image: Option<String>,

    /// Image pull policy of the agent pods.
    #[arg(long, value_name = "POLICY", global = true, value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: Option<String>,

    /// How long agent pods may take to start.
    #[arg(long, value_name = "DURATION", global = true, default_value = defaults::POD_START_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,

    /// Run agent pods privileged (kernels without CAP_BPF, before 5.8) instead of with listed
    /// capabilities.
    #[arg(long, global = true)]
    pub privileged: bool,

    /// Label this command's agent pods with this session id instead of a random one (for
    /// scripts: `cleanup --session ID` then lists and deletes only that session's pods).
    #[arg(long, value_name = "ID", global = true, value_parser = parse_session)]
    pub session: Option<String>,

    /// Where agents come from: auto uses the always-on DaemonSet's agent on nodes that run one
    /// (manifests/persistent) and ephemeral pods elsewhere; ephemeral always starts pods;
    /// persistent only uses always-on agents and creates or deletes nothing.
    #[arg(long, value_enum, global = true, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Set by the `gpu` command (not a flag): agent pods mount what GPU telemetry reads.
    #[arg(skip)]
    pub gpu: bool,
    /// Set by `trace dns --dns-port` (not a flag here): ports agent pods parse as DNS besides 53.
    #[arg(skip)]
    pub dns_ports: Vec<u16>,
}

impl ClusterArgs {
    /// Which cluster these flags name.
    pub fn access(&self) -> KubeAccess {
        KubeAccess {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

impl GlobalArgs {
    /// What cluster mode needs from these flags.
    pub fn cluster_options(&self) -> ClusterOptions {
        let c = &self.cluster;
        ClusterOptions {
            access: c.access(),
            all_namespaces: c.all_namespaces,
            selector: c.selector.clone(),
            nodes: c.nodes.clone(),
            agent_namespace: c.agent_namespace.clone(),
            image: c.image.clone(),
            pull_policy: c.image_pull_policy.clone(),
            start_timeout: c.timeout,
            connect_timeout: self.connect_timeout,
            privileged: c.privileged,
            session: c.session.clone(),
            mode: c.mode,
            gpu: c.gpu,
            dns_ports: c.dns_ports.clone(),
        }
    }
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show each agent: versions, kernel, attach mode, interfaces, flows, losses, uptime.
    Status,
    /// Collect for a while, then print the merged flow table of every agent.
    Flows(FlowsArgs),
    /// Print events live as the agents see them.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// A live full-screen view of who talks to whom: top talkers by pod and peer with rates,
    /// drill-down into a pod, agents and losses (`?` lists the keys; `q` quits).
    Top(TopArgs),
    /// GPUs of the nodes (utilization, memory, power), the pods the kubelet gave each GPU,
    /// MIG instance or time-sliced share to, their processes, and where the two disagree.
    Gpu(GpuArgs),
    /// Print the client's version and protocol, and each reachable agent's.
    Version,
    /// List and delete agent pods a killed session left behind (found by label).
    Cleanup(CleanupArgs),
    /// Print the shell completion script for kubectl-orb8 (bash, zsh, fish, powershell,
    /// elvish); README says where to put it.
    Completion(CompletionArgs),
}

/// `completion` arguments.
#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `gpu` flags.
#[derive(Debug, Clone, Args)]
pub struct GpuArgs {
    /// Only this pod (cluster mode; namespace from -n): an agent starts on its node only.
    #[arg(value_name = "POD")]
    pub pod: Option<String>,

    /// Print again every --interval until Ctrl-C (NDJSON with -o json).
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// Sampling interval: the window of per-process utilization, and with --watch the
    /// refresh period.
    #[arg(long, value_name = "DURATION", default_value = defaults::GPU_INTERVAL, value_parser = parse_duration)]
    pub interval: Duration,
}

/// `cleanup` flags.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `trace` can follow.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// New network flows, one line each (NDJSON with -o json).
    Network(TraceNetworkArgs),
    /// Syscalls of a process or cgroup, filtered in the kernel: an `strace -c`-like summary
    /// when the trace ends (--duration, Ctrl-C or the target exiting), or one line per syscall
    /// with --stream.
    Syscall(TraceSyscallArgs),
    /// DNS exchanges, one line each: client, server, name, type, response code, latency and
    /// answers, or TIMEOUT (NDJSON with -o json); --summary counts them per client, name and
    /// response code instead.
    Dns(TraceDnsArgs),
    /// Packets the kernel dropped, with its reason by name (NO_SOCKET, NETFILTER_DROP, ...):
    /// one line per new (namespace, interface, reason, 5-tuple), aggregated in the kernel; in
    /// cluster mode only the selected pods' traffic. --summary prints counts by pod, reason
    /// and peer at the end instead.
    Drops(TraceDropsArgs),
    /// TCP connections as the kernel changes their state: connects and accepts with the
    /// handshake time, closes with how they ended (who sent the first FIN, refused, reset),
    /// resets and retransmits, client first; --states adds every state change.
    Tcp(TraceTcpArgs),
}

/// `trace tcp` flags.
#[derive(Debug, Clone, Args)]
pub struct TraceTcpArgs {
    /// Also print every state change (SYN_SENT -> ESTABLISHED, ...).
    #[arg(long)]
    pub states: bool,

    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Only connections from or to this address (repeatable; filtered in the kernel). Added
    /// to the selected pods' addresses in cluster mode.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,
}

/// `trace drops` flags.
#[derive(Debug, Clone, Args)]
pub struct TraceDropsArgs {
    /// Print counts by (pod, reason, peer) when the trace ends instead of a line per new drop.
    #[arg(long)]
    pub summary: bool,

    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Only packets from or to this address (repeatable; filtered in the kernel). Added to
    /// the selected pods' addresses in cluster mode.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,
}

/// `trace dns` flags.
#[derive(Debug, Clone, Args)]
pub struct TraceDnsArgs {
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Print per (client, name, response code) counts and latency percentiles at the end
    /// instead of one line per exchange.
    #[arg(long)]
    pub summary: bool,

    /// Also parse this port as DNS besides 53 (repeatable, at most 7): given to the agent
    /// --local starts and to ephemeral agent pods; always-on agents keep their own ports.
    #[arg(long = "dns-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_ports: Vec<u16>,
}

/// `trace syscall` flags.
#[derive(Debug, Clone, Args)]
pub struct TraceSyscallArgs {
    /// The pod to trace (cluster mode; namespace from -n): an agent starts on its node only
    /// and traces its containers' cgroups.
    #[arg(value_name = "POD", conflicts_with_all = ["pid", "cgroup"])]
    pub pod: Option<String>,

    /// The pod's container to trace (with POD).
    #[arg(short = 'c', long, value_name = "CONTAINER", requires = "pod")]
    pub container: Option<String>,

    /// Trace this process's cgroup v2 group (its PID namespace or the process alone where it
    /// has no group of its own), by its PID on the agent's host.
    #[arg(long, value_name = "PID", conflicts_with = "cgroup")]
    pub pid: Option<u32>,

    /// Trace this cgroup v2 directory (absolute, or relative to the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Only these syscalls, e.g. openat,connect (comma-separated or repeated).
    #[arg(long = "syscall", value_name = "NAMES", value_delimiter = ',')]
    pub syscalls: Vec<String>,

    /// Print every syscall as it returns instead of a summary at the end.
    #[arg(long)]
    pub stream: bool,

    /// Stop after this long (default: until Ctrl-C or the target exits).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// Flow filters shared by `flows` and `trace network`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Only flows with this source or destination port (repeatable).
    #[arg(long = "port", value_name = "N")]
    pub ports: Vec<u16>,

    /// Only this protocol: tcp, udp, icmp, icmpv6, sctp, udplite or a number (repeatable).
    #[arg(long = "protocol", value_name = "PROTO", value_parser = parse_protocol)]
    pub protocols: Vec<Protocol>,

    /// Only flows from or to this address (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<IpAddr>,

    /// Only flows from or to an address in this block, e.g. 10.0.0.0/8 (repeatable).
    #[arg(long = "cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub cidrs: Vec<Cidr>,

    /// Only this direction.
    #[arg(long, value_parser = direction_parser())]
    pub direction: Option<Direction>,

    /// Only flows on this interface (repeatable).
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
}

impl FilterArgs {
    /// The filter these flags describe.
    pub fn spec(&self) -> FlowFilterSpec {
        let mut cidrs: Vec<Cidr> = self.ips.iter().copied().map(Cidr::host).collect();
        cidrs.extend(self.cidrs.iter().copied());
        FlowFilterSpec {
            cidrs,
            ports: self.ports.clone(),
            protocols: self.protocols.clone(),
            direction: self.direction,
            interfaces: self.interfaces.clone(),
        }
    }
}

/// What one row of `flows` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FlowsBy {
    /// One row per pod, peer, service port, protocol and direction, with connection counts
    /// ("who talks to whom").
    #[default]
    Peer,
    /// One row per flow (five-tuple and direction) as the kernel counts it.
    Connection,
}

/// `flows` flags.
#[derive(Debug, Clone, Args)]
pub struct FlowsArgs {
    /// What a row is: a peer of a pod (grouped), or one connection.
    #[arg(long, value_enum, default_value_t = FlowsBy::Peer)]
    pub by: FlowsBy,

    /// How long to collect before printing (Ctrl-C ends early and still prints).
    #[arg(long, value_name = "DURATION", default_value = defaults::FLOWS_DURATION, value_parser = parse_duration)]
    pub duration: Duration,

    /// Order of the table.
    #[arg(long, value_parser = sort_parser(), default_value_t = SortKey::Bytes)]
    pub sort: SortKey,

    /// Print at most N rows (of the merged table).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,

    /// Filters (last, so that their help heading does not spill onto the flags above).
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `trace network` flags.
#[derive(Debug, Clone, Args)]
pub struct TraceNetworkArgs {
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Filters (last, so that their help heading does not spill onto the flags above).
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `top` flags.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// How often the flow tables are read (rates are the growth between two reads).
    #[arg(long, value_name = "DURATION", default_value = defaults::TOP_INTERVAL, value_parser = parse_interval)]
    pub interval: Duration,

    /// Filters (last, so that their help heading does not spill onto the flags above).
    #[command(flatten)]
    pub filter: FilterArgs,
}

fn parse_interval(input: &str) -> Result<Duration, String> {
    let d = parse_duration(input)?;
    if d < Duration::from_millis(100) {
        return Err("the interval must be at least 100ms".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_durations_are_refused_with_the_input() {
        let err = parse_duration("10x").expect_err("bad unit");
        assert!(err.contains("unknown time unit"), "{err}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn parses_a_full_flows_command() {
        let cli = Cli::try_parse_from([
            "kubectl-orb8",
            "--agent",
            "127.0.0.1:7000",
            "--agent=unix:/run/a.sock",
            "flows",
            "-o",
            "json",
            "--port",
            "53",
            "--port",
            "443",
            "--protocol",
            "udp",
            "--ip",
            "10.0.0.1",
            "--cidr",
            "fd00::/8",
            "--direction",
            "egress",
            "--interface",
            "eth0",
            "--limit",
            "5",
            "--sort",
            "packets",
            "--duration",
            "2s",
        ])
        .expect("parses");
        assert_eq!(cli.global.agents.len(), 2);
        assert_eq!(cli.global.output, OutputFormat::Json);
        let Command::Flows(f) = cli.command else {
            panic!("expected flows");
        };
        let spec = f.filter.spec();
        assert_eq!(
            spec,
            FlowFilterSpec {
                cidrs: vec![
                    Cidr::parse("10.0.0.1/32").expect("cidr"),
                    Cidr::parse("fd00::/8").expect("cidr")
                ],
                ports: vec![53, 443],
                protocols: vec![Protocol::UDP],
                direction: Some(Direction::Egress),
                interfaces: vec!["eth0".into()],
            }
        );
        assert_eq!(f.limit, Some(5));
        assert_eq!(f.by, FlowsBy::Peer, "grouped unless asked");
        assert_eq!(f.sort, SortKey::Packets);
        assert_eq!(f.duration, Duration::from_secs(2));
    }

    #[test]
    fn gpu_takes_a_pod_watch_and_an_interval() {
        let cli = Cli::try_parse_from([
            "kubectl-orb8",
            "-n",
            "ml",
            "gpu",
            "train-0",
            "--watch",
            "--interval",
            "5s",
        ])
        .expect("parses");
        let Command::Gpu(g) = cli.command else {
            panic!("expected gpu");
        };
        assert_eq!(
            (g.pod.as_deref(), g.watch, g.interval),
            (Some("train-0"), true, Duration::from_secs(5))
        );
        let Command::Gpu(g) = Cli::try_parse_from(["kubectl-orb8", "gpu"])
            .expect("parses")
            .command
        else {
            panic!("expected gpu");
        };
        assert_eq!(
            (g.pod, g.watch, g.interval),
            (None, false, Duration::from_secs(2))
        );
        assert!(Cli::try_parse_from(["kubectl-orb8", "gpu", "--interval", "0x"]).is_err());
    }

    #[test]
    fn session_ids_fit_labels_and_pod_names() {
        for ok in ["a", "e2e1f2k1", "ci-42", "abcdefghij0123456789"] {
            assert_eq!(parse_session(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "-a", "a-", "A1", "a_b", "a.b", "abcdefghij0123456789x"] {
            assert!(parse_session(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cluster_flags_become_plain_options() {
        let args = "kubectl-orb8 --kubeconfig /tmp/kc --context kind -n shop -l app=x --node n1 \
            --agent-namespace agents --image img:1 --image-pull-policy Never --timeout 7s \
            --connect-timeout 2s --privileged --session ci-42 --mode persistent status";
        let cli = Cli::try_parse_from(args.split_whitespace()).expect("parses");
        let access = KubeAccess {
            kubeconfig: Some("/tmp/kc".into()),
            context: Some("kind".into()),
            namespace: Some("shop".into()),
        };
        assert_eq!(cli.global.cluster.access(), access);
        let expected = ClusterOptions {
            access,
            all_namespaces: false,
            selector: Some("app=x".into()),
            nodes: vec!["n1".into()],
            agent_namespace: "agents".into(),
            image: Some("img:1".into()),
            pull_policy: Some("Never".into()),
            start_timeout: Duration::from_secs(7),
            connect_timeout: Duration::from_secs(2),
            privileged: true,
            session: Some("ci-42".into()),
            mode: Mode::Persistent,
            gpu: false,
            dns_ports: Vec::new(),
        };
        assert_eq!(cli.global.cluster_options(), expected);
        let plain = Cli::try_parse_from(["kubectl-orb8", "-A", "status"]).expect("parses");
        let o = plain.global.cluster_options();
        assert_eq!(
            (o.access, o.all_namespaces, o.agent_namespace.as_str()),
            (KubeAccess::default(), true, "orb8-system")
        );
        assert_eq!(
            (o.start_timeout, o.connect_timeout, o.mode),
            (Duration::from_secs(60), Duration::from_secs(5), Mode::Auto)
        );
    }

    #[test]
    fn direction_and_sort_take_the_shared_names_only() {
        let flows = |extra: &[&str]| {
            let mut args = vec!["kubectl-orb8", "flows"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        let Command::Flows(f) = flows(&["--direction", "ingress", "--sort", "time"])
            .expect("parses")
            .command
        else {
            panic!("expected flows");
        };
        assert_eq!(f.filter.direction, Some(Direction::Ingress));
        assert_eq!(f.sort, SortKey::Time);
        let Command::Flows(f) = flows(&[]).expect("parses").command else {
            panic!("expected flows");
        };
        assert_eq!((f.filter.direction, f.sort), (None, SortKey::Bytes));
        assert_eq!(f.duration, Duration::from_secs(10));
        for bad in [
            &["--direction", "up"][..],
            &["--sort", "size"][..],
            &["--direction", "Egress"][..],
        ] {
            assert!(flows(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repeated_agents_count_on_every_level() {
        let args: Vec<OsString> = [
            "kubectl-orb8",
            "--agent",
            "127.0.0.1:1",
            "flows",
            "--agent=127.0.0.1:2",
            "--port",
            "53",
            "--local-arg",
            "--agent",
            "--",
            "--agent",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let hoisted = hoist_repeatable_globals(args);
        let got: Vec<&str> = hoisted.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(
            got,
            vec![
                "kubectl-orb8",
                "--agent",
                "127.0.0.1:1",
                "--agent=127.0.0.1:2",
                "--local-arg",
                "--agent",
                "flows",
                "--port",
                "53",
                "--",
                "--agent"
            ]
        );
        let cli = Cli::try_parse_from(hoist_repeatable_globals(
            ["kubectl-orb8", "--agent", "a:1", "status", "--agent", "b:2"]
                .iter()
                .map(OsString::from)
                .collect(),
        ))
        .expect("parses");
        assert_eq!(cli.global.agents.len(), 2);
    }

    #[test]
    fn local_and_agent_exclude_each_other_and_local_args_take_flags() {
        assert!(
            Cli::try_parse_from(["kubectl-orb8", "--local", "--agent", "a:1", "status"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "kubectl-orb8",
            "--local",
            "--local-arg=--interface=eth0",
            "--local-arg",
            "--verbose",
            "status",
        ])
        .expect("parses");
        assert_eq!(cli.global.local_args, vec!["--interface=eth0", "--verbose"]);
    }
}
