//! The agent's defaults in one place: the CLI's default values, the sizes of the queues between
//! the kernel, the agent and its clients, and the periods of its background checks. Every other
//! module names these constants instead of repeating a number.

use std::time::Duration;

/// `serve --listen`: loopback, a free port.
pub const LISTEN: &str = "127.0.0.1:0";
/// `serve --idle-timeout`: exit when no client has been connected for this long.
pub const IDLE_TIMEOUT: &str = "60s";
/// How often the idle watchdog looks at the connection count (or the idle timeout, if shorter).
pub const IDLE_CHECK: Duration = Duration::from_millis(100);

/// `--flow-map-size`: IPv4 flow table capacity (entries).
pub const FLOW_MAP_ENTRIES: u32 = 65536;
/// `--flow-map-size-v6`, when not given: this fraction of `--flow-map-size`, at least
/// [`MIN_FLOW_MAP_V6`]. Both tables are preallocated in the kernel, per CPU, and at load: a
/// full-size IPv6 table would double the kernel memory of IPv4-only clusters, and each 8192
/// entries add ~12 ms to the agent's start (measured: 65536 + 16384 entries 372 ms to ready,
/// 65536 + 1024 348 ms, on a slow 2-vCPU machine).
pub const FLOW_MAP_V6_DIVISOR: u32 = 8;
/// The smallest default IPv6 flow table.
pub const MIN_FLOW_MAP_V6: u32 = 1024;
/// `--ringbuf-size`: bytes of the new-flow ring buffer.
pub const RINGBUF_BYTES: u32 = 1 << 20;
/// The smallest ring buffer the kernel accepts: one page.
pub const MIN_RINGBUF_BYTES: u32 = 4096;
/// `--rescan-ms`: how often the interface list is re-read, in milliseconds.
pub const RESCAN_MS: u64 = 250;
/// The shortest rescan period accepted.
pub const MIN_RESCAN: Duration = Duration::from_millis(10);
/// How often veths whose peer is unknown are looked up again (it reads `/proc`).
pub const PEER_SCAN: Duration = Duration::from_secs(1);

/// `serve --metrics-pod-cap`: pods with their own `orb8_pod_bytes_total` series; the traffic
/// of further pods is summed in one `_other` series.
pub const METRICS_POD_CAP: usize = 256;

/// Flow events queued in the agent's fan-out; a consumer further behind loses the oldest,
/// counted as `queue_overflow`.
pub const EVENT_QUEUE: usize = 16384;
/// Messages buffered per client stream; a client further behind loses events, counted as
/// `slow_client` and reported to it in a `Gap`.
pub const CLIENT_BUFFER: usize = 4096;
/// `ListFlows`: flows per page when the client does not say, and the most it may ask for
/// (a page of 4096 flows is about 0.6 MB encoded, well under gRPC's 4 MiB message limit).
pub const FLOW_PAGE: usize = 4096;
/// `ListFlows`: the largest page a client may ask for.
pub const FLOW_PAGE_MAX: usize = 16384;
/// The longest a flow stream's unreported loss waits for its `Gap` when no event comes.
pub const GAP_FLUSH: Duration = Duration::from_millis(250);

/// Bytes of the DNS message ring buffer (a message takes about 1.1 KiB).
pub const DNS_RINGBUF_BYTES: u32 = 1 << 20;
/// `--dns-timeout`: a query without a response this long is reported as a timeout.
pub const DNS_TIMEOUT: &str = "5s";
/// The shortest period of the DNS timeout check.
pub const DNS_EXPIRE_MIN: Duration = Duration::from_millis(50);
/// Open DNS queries tracked (and finished ones remembered for de-duplication); queries beyond
/// it are counted as `dns_pending_full`.
pub const DNS_PENDING: usize = 65536;
/// Addresses remembered with the DNS name they were an answer for.
pub const DNS_NAMES: usize = 65536;
/// DNS exchanges queued in the agent's fan-out.
pub const DNS_EVENT_QUEUE: usize = 4096;
/// `--dns-port`: extra ports besides 53, at most this many.
pub const DNS_EXTRA_PORTS: usize = orb8_common::dns::MAX_PORTS - 1;

/// Bytes of the syscall event ring buffer.
pub const SYSCALL_RINGBUF_BYTES: u32 = 4 << 20;
/// Syscall events queued for stream consumers in the agent; one further behind loses the oldest.
pub const SYSCALL_EVENT_QUEUE: usize = 65536;
/// Bytes of the drop tracer's new-key ring buffer.
pub const DROP_RINGBUF_BYTES: u32 = 1 << 20;
/// New-key drop events queued for stream consumers in the agent.
pub const DROP_EVENT_QUEUE: usize = 16384;
/// How often a drop trace reports the kernel's losses (and flushes its gaps).
pub const DROP_TICK: Duration = Duration::from_millis(200);
/// Bytes of the TCP tracer's event ring buffer.
pub const TCP_RINGBUF_BYTES: u32 = 1 << 20;
/// TCP events queued for stream consumers in the agent.
pub const TCP_EVENT_QUEUE: usize = 16384;
/// How often a syscall trace checks that its target is still there (and flushes its gaps).
pub const TRACE_EXIT_CHECK: Duration = Duration::from_millis(20);
/// How long a trace whose target exited waits for the target's last events to be read.
pub const TRACE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a DCGM exporter serves its metrics on the host network (its default port), read
/// when NVML is absent and nothing else was configured.
pub const DCGM_EXPORTER_URL: &str = "http://127.0.0.1:9400/metrics";
/// How long connecting to and reading the DCGM exporter may take.
pub const DCGM_TIMEOUT: Duration = Duration::from_millis(500);
/// The most bytes of a DCGM exporter's answer read.
pub const DCGM_MAX_BYTES: u64 = 8 << 20;
/// Per-process GPU utilization window when the client gives none.
pub const GPU_SAMPLE_WINDOW: Duration = Duration::from_secs(1);
/// How long one question to the kubelet's pod-resources socket may take.
pub const POD_RESOURCES_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_values_the_agent_accepts() {
        assert_eq!(
            humantime::parse_duration(IDLE_TIMEOUT).unwrap(),
            Duration::from_secs(60)
        );
        assert!(RINGBUF_BYTES.is_power_of_two() && RINGBUF_BYTES >= MIN_RINGBUF_BYTES);
        assert!(SYSCALL_RINGBUF_BYTES.is_power_of_two());
        assert!(DROP_RINGBUF_BYTES.is_power_of_two());
        assert!(TCP_RINGBUF_BYTES.is_power_of_two());
        assert!(DNS_RINGBUF_BYTES.is_power_of_two());
        assert_eq!(
            humantime::parse_duration(DNS_TIMEOUT).unwrap(),
            Duration::from_secs(5)
        );
        assert!(Duration::from_millis(RESCAN_MS) >= MIN_RESCAN);
        assert!(GAP_FLUSH > Duration::ZERO && TRACE_EXIT_CHECK > Duration::ZERO);
    }
}
