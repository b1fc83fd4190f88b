//! The data every output format shows: flows, statuses, versions and live-trace lines as
//! plain structs (serialised as they are for JSON and YAML, laid out by `table`), built from
//! the model and the wire types.

use std::collections::BTreeMap;
use std::time::Duration;

use orb8_proto::{DropStage, GetStatusResponse};
use serde::Serialize;

use crate::flow::{FlowRecord, direction_name, rfc3339_nanos};
use crate::group::FlowGroup;
use crate::merge::GapCause;

/// The `-o/--output` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table that fits the terminal.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// JSON (one document; NDJSON for live traces).
    Json,
    /// YAML.
    Yaml,
}

/// A flow as JSON and YAML show it: names instead of numbers, exact counts, RFC 3339 times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// Node the flow was seen on.
    pub node: String,
    /// Interface name.
    pub interface: String,
    /// The observed end's direction (`egress`: the pod behind the veth, or the node on an
    /// uplink, sent it); `ingress` or `egress`.
    pub direction: &'static str,
    /// The direction relative to the interface, as the kernel counted it.
    pub interface_direction: &'static str,
    /// Why the agent watches the interface (`veth`, `uplink`, `bridge`, `explicit`); absent
    /// from agents that do not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_role: Option<&'static str>,
    /// Protocol name (`udp`) or number as text (`47`).
    pub protocol: String,
    /// Source address.
    pub src: String,
    /// Source port.
    pub src_port: u32,
    /// Destination address.
    pub dst: String,
    /// Destination port (ICMP: `type << 8 | code`).
    pub dst_port: u32,
    /// Built from non-first fragments (ports unknown).
    pub fragment: bool,
    /// Packets.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
    /// TCP flags as tcpdump letters.
    pub tcp_flags: String,
    /// First packet, RFC 3339 UTC with nanoseconds.
    pub first_seen: Option<String>,
    /// Latest packet, RFC 3339 UTC with nanoseconds.
    pub last_seen: Option<String>,
    /// What the source is (cluster mode): `ns/pod`, `svc:ns/name`, `host:node`, `world`,
    /// `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_name: Option<String>,
    /// What the destination is, as `src_name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    /// The namespace of the flow's pod end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod end of the flow (`ns/pod`), when one end is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The other end, named like `src_name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// For a flow on a host-side veth: the process in the namespace it leads to (`comm[pid]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// That process's container ID, when its cgroup names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// That process's cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl From<&FlowRecord> for FlowView {
    fn from(f: &FlowRecord) -> Self {
        FlowView {
            node: f.node.clone(),
            interface: f.interface.clone(),
            direction: direction_name(f.direction),
            interface_direction: direction_name(f.interface_direction),
            interface_role: f.interface_role.map(orb8_flowspec::InterfaceRole::name),
            protocol: f.protocol_text(),
            src: f.src_text(),
            src_port: f.src_port,
            dst: f.dst_text(),
            dst_port: f.dst_port,
            fragment: f.fragment,
            packets: f.packets,
            bytes: f.bytes,
            tcp_flags: f.tcp_flag_letters(),
            first_seen: rfc3339_nanos(f.first_seen_nanos),
            last_seen: rfc3339_nanos(f.last_seen_nanos),
            src_name: f.src_name.as_ref().map(crate::flow::Endpoint::label),
            dst_name: f.dst_name.as_ref().map(crate::flow::Endpoint::label),
            namespace: match crate::enrich::pod_and_peer(f).0 {
                Some(crate::flow::Endpoint::Pod { namespace, .. }) => Some(namespace.clone()),
                _ => None,
            },
            pod: match crate::enrich::pod_and_peer(f).0 {
                Some(e @ crate::flow::Endpoint::Pod { .. }) => Some(e.label()),
                _ => None,
            },
            peer: match crate::enrich::pod_and_peer(f) {
                (Some(crate::flow::Endpoint::Pod { .. }), peer) => {
                    peer.map(crate::flow::Endpoint::label)
                }
                _ => None,
            },
            process: f
                .netns_owner
                .as_ref()
                .map(|o| format!("{}[{}]", o.comm, o.pid)),
            container_id: f
                .netns_owner
                .as_ref()
                .map(|o| o.container_id.clone())
                .filter(|c| !c.is_empty()),
            cgroup: f
                .netns_owner
                .as_ref()
                .map(|o| o.cgroup.clone())
                .filter(|c| !c.is_empty()),
        }
    }
}

/// A row of the grouped flow view as JSON and YAML show it (see `group` for what each field
/// means).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowGroupView {
    /// Node the flows were seen on.
    pub node: String,
    /// The observed end: `ns/pod`, `host:node`; its address without names.
    pub pod: String,
    /// The other end, named as `pod` (`world(addr)`/`unknown(addr)` for ends nobody owns).
    pub peer: String,
    /// The service port (the lower of each connection's two ports); absent without ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Protocol name (`tcp`) or number as text.
    pub protocol: String,
    /// The observed end's direction: `egress` (it sent) or `ingress`.
    pub direction: &'static str,
    /// Flows (five-tuples) folded into the row.
    pub connections: u64,
    /// Packets.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
    /// Every TCP flag any of them carried, as tcpdump letters.
    pub tcp_flags: String,
    /// How many of them carried a TCP reset.
    pub resets: u64,
    /// How many of them were failed connects (a SYN, never an ACK).
    pub failed: u64,
    /// The earliest first packet, RFC 3339 UTC with nanoseconds.
    pub first_seen: Option<String>,
    /// The latest packet, RFC 3339 UTC with nanoseconds.
    pub last_seen: Option<String>,
}

impl From<&FlowGroup> for FlowGroupView {
    fn from(g: &FlowGroup) -> Self {
        FlowGroupView {
            node: g.key.node.clone(),
            pod: g.key.pod.clone(),
            peer: g.key.peer.clone(),
            port: g.key.port,
            protocol: g.key.protocol.to_string(),
            direction: direction_name(g.key.direction),
            connections: g.connections,
            packets: g.packets,
            bytes: g.bytes,
            tcp_flags: g.tcp_flag_letters(),
            resets: g.resets,
            failed: g.failed,
            first_seen: rfc3339_nanos(g.first_seen_nanos),
            last_seen: rfc3339_nanos(g.last_seen_nanos),
        }
    }
}

/// One line of `trace network -o json`: a flow, new or already active when the trace started.
#[derive(Debug, Clone, Serialize)]
pub struct NewFlowLine {
    /// `new_flow` (counts: its first packet) or `active_flow` (in the table when the trace
    /// started; counts so far).
    pub event: &'static str,
    /// The flow's first packet, RFC 3339 UTC with nanoseconds.
    pub time: Option<String>,
    /// The agent's per-stream sequence number.
    pub seq: u64,
    /// The flow's fields.
    #[serde(flatten)]
    pub flow: FlowView,
}

/// One line of `trace network -o json`: events lost.
#[derive(Debug, Clone, Serialize)]
pub struct GapLine<'a> {
    /// Always `gap`.
    pub event: &'static str,
    /// Node that lost them.
    pub node: &'a str,
    /// How many.
    pub lost: u64,
    /// `kernel`, `agent`, `client` or `unknown`.
    pub stage: &'static str,
    /// Short reason (`ringbuf_full`, `seq_jump`, ...).
    pub reason: &'a str,
}

impl<'a> GapLine<'a> {
    /// The line for a gap on `node`.
    pub fn new(node: &'a str, lost: u64, cause: &'a GapCause) -> Self {
        GapLine {
            event: "gap",
            node,
            lost,
            stage: cause.stage_name(),
            reason: cause.reason(),
        }
    }
}

/// One line of `trace network -o json`: an agent's stream ended.
#[derive(Debug, Clone, Serialize)]
pub struct AgentLostLine<'a> {
    /// Always `agent_lost`.
    pub event: &'static str,
    /// The agent.
    pub node: &'a str,
    /// What happened.
    pub error: &'a str,
}

/// An agent's status with the address it was reached at.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// The address given with `--agent` (or the local agent's).
    pub address: String,
    /// How it was reached: `local`, `direct`, `ephemeral` or `persistent`.
    pub mode: String,
    /// What GetStatus answered.
    pub status: GetStatusResponse,
}

/// One interface in a status view.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceView {
    /// Kernel ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Why it is watched.
    pub role: String,
}

/// One loss counter in a status view.
#[derive(Debug, Clone, Serialize)]
pub struct DropView {
    /// `kernel`, `agent`, `client` or `unknown`.
    pub stage: &'static str,
    /// Reason.
    pub reason: String,
    /// Count.
    pub count: u64,
}

/// An agent's status as JSON and YAML show it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Node name.
    pub node: String,
    /// Where it was reached.
    pub address: String,
    /// How it was reached: `local`, `direct`, `ephemeral` or `persistent`.
    pub mode: String,
    /// Agent version.
    pub agent_version: String,
    /// Wire protocol version.
    pub protocol_version: u32,
    /// Kernel release.
    pub kernel: String,
    /// Whether kernel BTF is present.
    pub btf: bool,
    /// `tcx` or `tc`.
    pub attach_mode: String,
    /// Watched interfaces.
    pub interfaces: Vec<InterfaceView>,
    /// Loaded programs.
    pub programs: Vec<String>,
    /// Flows in the kernel table now.
    pub active_flows: u64,
    /// Packets the probes ran on.
    pub packets_seen: u64,
    /// New-flow events read from the kernel.
    pub events_processed: u64,
    /// Flows evicted from the full kernel table.
    pub flow_map_evictions: u64,
    /// Sum of every loss counter.
    pub drops_total: u64,
    /// Every loss counter.
    pub drops: Vec<DropView>,
    /// Packets not attributed to a flow, by reason.
    pub packets_not_parsed: BTreeMap<String, u64>,
    /// DNS counters (messages, exchanges, timeouts, duplicates, unparsed by reason, ...);
    /// empty from agents that predate them.
    pub dns: BTreeMap<String, u64>,
    /// Uptime in milliseconds.
    pub uptime_ms: u64,
    /// Uptime in words (`1h 2m 3s`).
    pub uptime: String,
    /// The node's GPU source, or why it has none (absent from agents that predate it).
    pub gpu: Option<GpuStatusView>,
}

/// A node's GPU source as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuStatusView {
    /// `nvml`, `dcgm-exporter`, `recorded`, or empty when none.
    pub source: String,
    /// One line: the GPUs and the source, or why there are none.
    pub summary: String,
    /// GPUs seen when the agent started.
    pub gpus: u32,
}

/// A drop stage as a lower-case word.
pub fn stage_name(stage: DropStage) -> &'static str {
    match stage {
        DropStage::Kernel => "kernel",
        DropStage::Agent => "agent",
        DropStage::Client => "client",
        DropStage::Unspecified => "unknown",
    }
}

/// Uptime rounded to seconds, in words.
pub fn uptime_text(uptime_ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(uptime_ms / 1000)).to_string()
}

impl From<&AgentStatus> for StatusView {
    fn from(a: &AgentStatus) -> Self {
        let s = &a.status;
        let counters = s.counters.clone().unwrap_or_default();
        let drops: Vec<DropView> = counters
            .drops
            .iter()
            .map(|d| DropView {
                stage: stage_name(d.stage()),
                reason: d.reason.clone(),
                count: d.count,
            })
            .collect();
        StatusView {
            node: s.node.clone(),
            address: a.address.clone(),
            mode: a.mode.clone(),
            agent_version: s.agent_version.clone(),
            protocol_version: s.protocol_version,
            kernel: s.kernel_release.clone(),
            btf: s.btf_present,
            attach_mode: s.attach_mode.clone(),
            interfaces: s
                .interfaces
                .iter()
                .map(|i| InterfaceView {
                    index: i.index,
                    name: i.name.clone(),
                    role: i.role.clone(),
                })
                .collect(),
            programs: s.programs.clone(),
            active_flows: counters.active_flows,
            packets_seen: counters.packets_seen,
            events_processed: counters.events_processed,
            flow_map_evictions: counters.flow_map_evictions,
            drops_total: drops.iter().map(|d| d.count).sum(),
            drops,
            packets_not_parsed: counters.packets_not_parsed.into_iter().collect(),
            dns: counters.dns.into_iter().collect(),
            uptime_ms: s.uptime_ms,
            uptime: uptime_text(s.uptime_ms),
            gpu: s.gpu.as_ref().map(|g| GpuStatusView {
                source: g.source.clone(),
                summary: g.summary.clone(),
                gpus: g.gpus,
            }),
        }
    }
}

/// `version` output: the client and every agent reached.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    /// This binary.
    pub client: ClientVersion,
    /// Agents reached (empty without `--agent`/`--local`).
    pub agents: Vec<AgentVersion>,
}

/// The client's version.
#[derive(Debug, Clone, Serialize)]
pub struct ClientVersion {
    /// kubectl-orb8 version.
    pub version: String,
    /// Wire protocol version.
    pub protocol: u32,
    /// The agent image cluster mode starts (`--image`, else the published one of this version).
    pub agent_image: String,
}

/// One agent's version.
#[derive(Debug, Clone, Serialize)]
pub struct AgentVersion {
    /// Node name.
    pub node: String,
    /// Where it was reached.
    pub address: String,
    /// Agent version.
    pub version: String,
    /// Wire protocol version.
    pub protocol: u32,
}
