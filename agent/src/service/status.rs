//! The `GetStatus` reply: who the agent is, its kernel and probes, and every counter, losses
//! by stage and reason included.

use std::sync::atomic::Ordering;

use orb8_common::counter;
use orb8_proto as pb;

use super::flows::iface;
use crate::runtime::Agent;

/// The status of `agent` as node `node`; `slow_client` is what flow streams lost to slow
/// clients.
pub fn status(agent: &Agent, node: &str, slow_client: u64) -> pb::GetStatusResponse {
    let (active_flows, c, flows_evicted) = agent.flow_count();
    let (mode, programs) = agent.probe_info();
    let drops = drop_counters(agent, &c, slow_client);
    let not_parsed = not_parsed(&c)
        .into_iter()
        .map(|(reason, n)| (reason.to_string(), n))
        .collect();
    pb::GetStatusResponse {
        node: node.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: pb::PROTOCOL_VERSION,
        kernel_release: kernel_release(),
        btf_present: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        attach_mode: mode.to_string(),
        interfaces: agent.interfaces().iter().map(iface).collect(),
        programs: programs.into_iter().map(String::from).collect(),
        counters: Some(pb::Counters {
            events_processed: agent.stats.events_received.load(Ordering::Relaxed),
            packets_seen: c[counter::PACKETS_SEEN as usize],
            active_flows,
            flow_map_evictions: flows_evicted,
            drops,
            packets_not_parsed: not_parsed,
            dns: dns_counters(agent, &c),
        }),
        uptime_ms: agent.uptime().as_millis() as u64,
        arch: orb8_syscalls::Arch::current()
            .map(|a| a.as_str())
            .unwrap_or(std::env::consts::ARCH)
            .to_string(),
        // Filled in by the service, which holds the GPU source.
        gpu: None,
    }
}

/// Every loss counter the agent has, by stage and reason, from the kernel counters `c` (see
/// [`Agent::counters`]) and what flow streams lost to slow clients. `GetStatus` and `/metrics`
/// both report exactly this list.
pub fn drop_counters(
    agent: &Agent,
    c: &[u64; counter::COUNT as usize],
    slow_client: u64,
) -> Vec<pb::DropCounter> {
    let mut drops = vec![
        drop_counter(
            pb::DropStage::Kernel,
            "ringbuf_full",
            c[counter::RINGBUF_FULL as usize],
        ),
        drop_counter(
            pb::DropStage::Kernel,
            "flow_insert_failed",
            c[counter::FLOW_INSERT_FAILED as usize],
        ),
        drop_counter(
            pb::DropStage::Agent,
            "queue_overflow",
            agent
                .stats
                .events_lost_slow_consumer
                .load(Ordering::Relaxed),
        ),
        drop_counter(pb::DropStage::Client, "slow_client", slow_client),
        drop_counter(
            pb::DropStage::Kernel,
            "dns_ringbuf_full",
            c[counter::DNS_RINGBUF_FULL as usize],
        ),
        drop_counter(
            pb::DropStage::Kernel,
            "dns_load_failed",
            c[counter::DNS_LOAD_FAILED as usize],
        ),
        drop_counter(
            pb::DropStage::Agent,
            "dns_queue_overflow",
            agent.stats.dns_lost_slow_consumer.load(Ordering::Relaxed),
        ),
        drop_counter(
            pb::DropStage::Agent,
            "dns_pending_full",
            dns_counter(agent, "dns_pending_full"),
        ),
        drop_counter(
            pb::DropStage::Client,
            "dns_slow_client",
            agent.stats.dns_slow_client.load(Ordering::Relaxed),
        ),
    ];
    if let Some(sc) = agent.syscalls.counters() {
        use orb8_common::sys::counter as sys;
        for i in [sys::INFLIGHT_FULL, sys::RINGBUF_FULL, sys::ERRNO_MAP_FULL] {
            drops.push(drop_counter(
                pb::DropStage::Kernel,
                &format!("syscall_{}", sys::NAMES[i as usize]),
                sc[i as usize],
            ));
        }
    }
    if let Some(dc) = agent.drops.counters() {
        use orb8_common::drops::counter as d;
        for i in [d::RINGBUF_FULL, d::INSERT_FAILED, d::READ_FAILED] {
            drops.push(drop_counter(
                pb::DropStage::Kernel,
                &format!("drops_{}", d::NAMES[i as usize]),
                dc[i as usize],
            ));
        }
        drops.push(drop_counter(
            pb::DropStage::Agent,
            "drops_queue_overflow",
            agent.drops.lost_agent.load(Ordering::Relaxed),
        ));
    }
    if let Some(tc) = agent.tcp.counters() {
        use orb8_common::tcp::counter as t;
        for i in [t::RINGBUF_FULL, t::CONN_MAP_FULL] {
            drops.push(drop_counter(
                pb::DropStage::Kernel,
                &format!("tcp_{}", t::NAMES[i as usize]),
                tc[i as usize],
            ));
        }
        drops.push(drop_counter(
            pb::DropStage::Agent,
            "tcp_queue_overflow",
            agent.tcp.lost_agent.load(Ordering::Relaxed),
        ));
    }
    drops
}

/// Every DNS counter by name: the kernel's (messages handed over, cut, lost) and the agent's.
pub fn dns_counters(
    agent: &Agent,
    c: &[u64; counter::COUNT as usize],
) -> std::collections::HashMap<String, u64> {
    [
        counter::DNS_MESSAGES,
        counter::DNS_TRUNCATED,
        counter::DNS_RINGBUF_FULL,
        counter::DNS_LOAD_FAILED,
    ]
    .into_iter()
    .map(|i| (counter::NAMES[i as usize], c[i as usize]))
    .chain(agent.dns_counters())
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn dns_counter(agent: &Agent, name: &str) -> u64 {
    agent
        .dns_counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v)
}

/// Packets the probe saw but could not account to a flow, by reason (kernel counter name).
pub fn not_parsed(c: &[u64; counter::COUNT as usize]) -> Vec<(&'static str, u64)> {
    [
        counter::NOT_IP,
        counter::TRUNCATED_L2,
        counter::BAD_L3,
        counter::BAD_L4,
        counter::IPV6_EXT_TOO_DEEP,
        counter::PULL_FAILED,
    ]
    .into_iter()
    .map(|i| (counter::NAMES[i as usize], c[i as usize]))
    .collect()
}

fn drop_counter(stage: pb::DropStage, reason: &str, count: u64) -> pb::DropCounter {
    pb::DropCounter {
        stage: stage as i32,
        reason: reason.to_string(),
        count,
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
