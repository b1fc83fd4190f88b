//! JSON records printed by `orb8-agent watch`: one object per line, so tests and `jq` can read
//! them while the agent runs.

use serde::Serialize;

use crate::{
    flows::{BootClock, Flow},
    interfaces::Selected,
    runtime::{Agent, AgentEvent, Snapshot},
};
use orb8_common::{Event, FlowKey, counter};
use orb8_flowspec::{Protocol, tcp_flag_letters};
use std::{collections::BTreeMap, sync::atomic::Ordering};

/// The identity of a flow, as printed.
#[derive(Debug, Serialize)]
pub struct FlowId {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// `ingress` or `egress` on that interface.
    pub direction: &'static str,
    /// `tcp`, `udp`, `icmp`, ... or the protocol number.
    pub protocol: String,
    /// Source address.
    pub src: String,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst: String,
    /// Destination port (ICMP: type << 8 | code).
    pub dst_port: u16,
    /// Built from non-first IP fragments (ports unknown).
    pub fragment: bool,
}

impl FlowId {
    /// Names a kernel flow key.
    pub fn new(agent: &Agent, key: &FlowKey) -> Self {
        let f = Flow {
            key: *key,
            stats: Default::default(),
        };
        FlowId {
            interface: agent.interface_name(key.ifindex),
            ifindex: key.ifindex,
            direction: f.direction(),
            protocol: Protocol(key.protocol).to_string(),
            src: f.src().to_string(),
            src_port: key.src_port,
            dst: f.dst().to_string(),
            dst_port: key.dst_port,
            fragment: f.is_fragment(),
        }
    }
}

/// A flow with its totals.
#[derive(Debug, Serialize)]
pub struct FlowRecord {
    /// Which flow.
    #[serde(flatten)]
    pub id: FlowId,
    /// Packets.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
    /// OR of TCP flags, tcpdump letters.
    pub tcp_flags: String,
    /// First packet, RFC 3339.
    pub first_seen: String,
    /// Last packet, RFC 3339.
    pub last_seen: String,
}

fn rfc3339(clock: &BootClock, ns: u64) -> String {
    humantime::format_rfc3339_nanos(clock.to_system_time(ns)).to_string()
}

/// One line of `watch -o json` output.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    /// Probes attached; the agent is observing.
    Ready {
        /// `tcx` or `tc`.
        attach_mode: &'static str,
        /// Attached interfaces.
        interfaces: Vec<IfaceRecord>,
    },
    /// A flow's first packet.
    NewFlow {
        /// When, RFC 3339.
        time: String,
        /// Which flow.
        #[serde(flatten)]
        id: FlowId,
        /// IP-layer bytes of the first packet.
        bytes: u32,
        /// TCP flags of the first packet.
        tcp_flags: String,
    },
    /// The probe was attached to an interface that appeared.
    Attached(IfaceRecord),
    /// The probe was detached from an interface that went away.
    Detached {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: String,
    },
    /// An interface could not be attached.
    AttachFailed {
        /// The interface.
        #[serde(flatten)]
        iface: IfaceRecord,
        /// Why.
        reason: String,
    },
    /// Events this consumer missed.
    Lost {
        /// How many.
        count: u64,
    },
    /// The final state, printed when the agent stops.
    Summary(Box<Summary>),
}

/// An interface the probe is attached to.
#[derive(Debug, Serialize)]
pub struct IfaceRecord {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Why it was chosen (`veth`, `uplink`, `bridge`, `explicit`).
    pub role: &'static str,
}

impl From<&Selected> for IfaceRecord {
    fn from(s: &Selected) -> Self {
        IfaceRecord {
            index: s.index,
            name: s.name.clone(),
            role: s.role.as_str(),
        }
    }
}

/// The flow table and counters when the agent stopped.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Kernel counters by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// Flows in the kernel table.
    pub flows_live: u64,
    /// Flows evicted from the full table.
    pub flows_evicted: u64,
    /// New-flow events read from the ring buffer.
    pub events_received: u64,
    /// Events lost because a consumer fell behind.
    pub events_lost_slow_consumer: u64,
    /// Every flow, largest first.
    pub flows: Vec<FlowRecord>,
}

impl Line {
    /// The line for an agent event.
    pub fn from_event(agent: &Agent, ev: &AgentEvent) -> Line {
        match ev {
            AgentEvent::NewFlow(e) => new_flow(agent, e),
            AgentEvent::Attached(s) => Line::Attached(s.into()),
            AgentEvent::Detached { index, name } => Line::Detached {
                index: *index,
                name: name.clone(),
            },
            AgentEvent::AttachFailed { iface, reason } => Line::AttachFailed {
                iface: iface.into(),
                reason: reason.clone(),
            },
        }
    }

    /// The summary line for a snapshot.
    pub fn summary(agent: &Agent, snap: &Snapshot) -> Line {
        let mut flows: Vec<FlowRecord> = snap
            .flows
            .iter()
            .map(|f| FlowRecord {
                id: FlowId::new(agent, &f.key),
                packets: f.stats.packets,
                bytes: f.stats.bytes,
                tcp_flags: tcp_flag_letters(f.stats.tcp_flags.into()),
                first_seen: rfc3339(&agent.flow_clock, f.stats.first_seen_ns),
                last_seen: rfc3339(&agent.flow_clock, f.stats.last_seen_ns),
            })
            .collect();
        flows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.packets.cmp(&a.packets)));
        Line::Summary(Box::new(Summary {
            counters: counter::NAMES
                .iter()
                .copied()
                .zip(snap.counters.iter().copied())
                .collect(),
            flows_live: snap.flows.len() as u64,
            flows_evicted: snap.flows_evicted,
            events_received: agent.stats.events_received.load(Ordering::Relaxed),
            events_lost_slow_consumer: agent
                .stats
                .events_lost_slow_consumer
                .load(Ordering::Relaxed),
            flows,
        }))
    }

    /// A human-readable line.
    pub fn text(&self) -> String {
        match self {
            Line::Ready {
                attach_mode,
                interfaces,
            } => {
                let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
                format!("attached ({attach_mode}) to {}", names.join(", "))
            }
            Line::NewFlow {
                time,
                id,
                bytes,
                tcp_flags,
            } => format!(
                "{time} {} {:<7} {:<6} {}:{} -> {}:{} {bytes}B {tcp_flags}",
                id.interface, id.direction, id.protocol, id.src, id.src_port, id.dst, id.dst_port
            ),
            Line::Attached(i) => format!("attached to {} ({})", i.name, i.role),
            Line::Detached { name, .. } => format!("detached from {name} (gone)"),
            Line::AttachFailed { iface, reason } => {
                format!("cannot attach to {}: {reason}", iface.name)
            }
            Line::Lost { count } => format!("missed {count} events (output too slow)"),
            Line::Summary(s) => {
                let mut out = format!(
                    "{} flows ({} evicted), {} packets seen\n",
                    s.flows_live, s.flows_evicted, s.counters["packets_seen"]
                );
                for f in &s.flows {
                    out.push_str(&format!(
                        "{} {:<7} {:<6} {}:{} -> {}:{} packets={} bytes={} flags={}\n",
                        f.id.interface,
                        f.id.direction,
                        f.id.protocol,
                        f.id.src,
                        f.id.src_port,
                        f.id.dst,
                        f.id.dst_port,
                        f.packets,
                        f.bytes,
                        f.tcp_flags
                    ));
                }
                out.pop();
                out
            }
        }
    }
}

fn new_flow(agent: &Agent, e: &Event) -> Line {
    Line::NewFlow {
        time: rfc3339(&agent.flow_clock, e.ts_ns),
        id: FlowId::new(agent, &e.key),
        bytes: e.bytes,
        tcp_flags: tcp_flag_letters(e.tcp_flags.into()),
    }
}
