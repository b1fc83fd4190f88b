//! The packet drop tracer: loads the `orb8-drops` object on the first trace (with the member
//! offsets and the `SKB_CONSUMED` number of the running kernel, from its BTF), fills its address
//! filter, reads its drop table, counters and new-key events, and unloads it when the last trace
//! ends.
//!
//! Traces share the kernel program, so concurrent traces must ask for the same addresses; each
//! gets the drops since it started (a baseline of the table is subtracted).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use orb8_common::drops::{DropConfig, DropEvent, DropKey, DropStats, counter, names};
use tokio::sync::broadcast;

use crate::btf::{Btf, BtfError, reason_name};
use crate::tracer::{
    Handle, Object, ObjectError, RingReader, Tracer, attach_raw_tracepoints, describe, fill_filter,
    key_addr, load_raw_tracepoints, read_counters, spawn_reader, take,
};

/// Why a drop trace could not start.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// The kernel's BTF lacks what the program needs.
    #[error("reading the kernel's types: {0}")]
    Btf(#[from] BtfError),
    /// A kernel struct member has a size the program does not read.
    #[error("{member} is {size} bytes in this kernel; the drop probe reads {expected}")]
    MemberSize {
        /// `struct.member`.
        member: String,
        /// Its size here.
        size: u32,
        /// What the probe reads.
        expected: u32,
    },
    /// The object could not be loaded or its program attached.
    #[error("loading the drop probe: {0}")]
    Load(String),
    /// Another trace with other addresses is running.
    #[error("this agent is already tracing drops of {running}; one address set at a time")]
    Busy {
        /// What is being traced.
        running: String,
    },
    /// A map could not be written.
    #[error("writing map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// The running kernel's drop reasons, by number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons(BTreeMap<u32, String>);

impl Reasons {
    /// From `enum skb_drop_reason`'s enumerators (name, value).
    pub fn from_enum(values: &[(String, i64)]) -> Reasons {
        Reasons(
            values
                .iter()
                .filter_map(|(n, v)| Some((u32::try_from(*v).ok()?, reason_name(n).to_string())))
                .collect(),
        )
    }

    /// The name of reason `code` (`NO_SOCKET`), `reason N` when the kernel does not name it.
    pub fn name(&self, code: u32) -> String {
        self.0
            .get(&code)
            .cloned()
            .unwrap_or_else(|| format!("reason {code}"))
    }

    /// The number of the reason named `name`.
    pub fn code(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }

    /// How many reasons the kernel names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the kernel names none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The program's settings for the running kernel (`btf`), and its reason names.
pub fn kernel_config(btf: &Btf) -> Result<(DropConfig, Reasons), DropError> {
    let reasons = Reasons::from_enum(&btf.enum_values("skb_drop_reason")?);
    let consumed = reasons.code("CONSUMED").ok_or(BtfError::NoType {
        what: "enumerator",
        name: "SKB_CONSUMED".into(),
    })?;
    let member = |ty: &str, path: &str, expected: u32| -> Result<u32, DropError> {
        let f = btf.member(ty, path)?;
        if f.size != expected {
            return Err(DropError::MemberSize {
                member: format!("{ty}.{path}"),
                size: f.size,
                expected,
            });
        }
        Ok(f.offset)
    };
    let config = DropConfig {
        skb_head: member("sk_buff", "head", 8)?,
        skb_network_header: member("sk_buff", "network_header", 2)?,
        skb_len: member("sk_buff", "len", 4)?,
        skb_dev: member("sk_buff", "dev", 8)?,
        skb_protocol: member("sk_buff", "protocol", 2)?,
        skb_sk: member("sk_buff", "sk", 8)?,
        dev_ifindex: member("net_device", "ifindex", 4)?,
        dev_net: member("net_device", "nd_net.net", 8)?,
        sk_net: member("sock", "__sk_common.skc_net.net", 8)?,
        net_inum: member("net", "ns.inum", 4)?,
        reason_consumed: consumed,
        filter_addrs: 0,
    };
    Ok((config, reasons))
}

/// Drops summed over CPUs, per key.
pub type Table = HashMap<DropKey, DropStats>;

/// Sums per-CPU copies of one key's drops (times: earliest first, latest last, 0 = none).
pub fn sum_stats<'a>(cpus: impl IntoIterator<Item = &'a DropStats>) -> DropStats {
    let mut out = DropStats::default();
    for s in cpus {
        out.packets += s.packets;
        out.bytes += s.bytes;
        if s.first_seen_ns != 0 && (out.first_seen_ns == 0 || s.first_seen_ns < out.first_seen_ns) {
            out.first_seen_ns = s.first_seen_ns;
        }
        out.last_seen_ns = out.last_seen_ns.max(s.last_seen_ns);
    }
    out
}

/// What happened in `now` since `base` (an earlier reading of the same table): keys with new
/// drops, with only those drops' packets and bytes.
pub fn since(now: &Table, base: &Table) -> Table {
    now.iter()
        .filter_map(|(k, s)| {
            let b = base.get(k).copied().unwrap_or_default();
            let packets = s.packets.saturating_sub(b.packets);
            (packets > 0).then(|| {
                (
                    *k,
                    DropStats {
                        packets,
                        bytes: s.bytes.saturating_sub(b.bytes),
                        ..*s
                    },
                )
            })
        })
        .collect()
}

/// A trace's drops since it started.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Per key.
    pub drops: Table,
    /// Kernel counters since the trace started, indexed by `drops::counter`.
    pub counters: [u64; counter::COUNT as usize],
    /// Time since the trace started.
    pub elapsed: Duration,
    /// New-key events the agent's queue dropped since the trace started.
    pub lost_agent: u64,
}

/// What a running drop trace keeps: the table and counters when it started.
pub struct DropTrace {
    table: Table,
    counters: [u64; counter::COUNT as usize],
    lost_agent_base: u64,
    started: Instant,
}

/// The drop probe while loaded (see [`Object`]).
pub struct DropProbe {
    _reader: RingReader,
    _ebpf: Ebpf,
    drops: PerCpuHashMap<MapData, DropKey, DropStats>,
    counters: PerCpuArray<MapData, [u64; counter::COUNT as usize]>,
    reasons: Arc<Reasons>,
}

/// The program and the raw tracepoint it attaches to.
const PROGRAMS: [(&str, &str); 1] = [(names::KFREE_SKB, "kfree_skb")];

impl From<ObjectError> for DropError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Map { name, source } => DropError::Map { name, source },
            other => DropError::Load(other.to_string()),
        }
    }
}

impl Object for DropProbe {
    type Event = DropEvent;
    type Key = Vec<[u8; 16]>;
    type Trace = DropTrace;
    type Args = ();
    type Error = DropError;
    const QUEUE: usize = crate::defaults::DROP_EVENT_QUEUE;
    const TRACE: &'static str = "drop trace";
    const PROBES: &'static str = "the drop probe";

    fn load(
        addrs: &Vec<[u8; 16]>,
        (): (),
        events: broadcast::Sender<DropEvent>,
        received: Arc<AtomicU64>,
    ) -> Result<Self, DropError> {
        let btf = Btf::vmlinux()?;
        let (mut config, reasons) = kernel_config(&btf)?;
        config.filter_addrs = u32::from(!addrs.is_empty());
        // No kernel BTF relocation: the offsets come from the config.
        let mut ebpf = EbpfLoader::without_btf()
            .map_max_entries(names::EVENTS, crate::defaults::DROP_RINGBUF_BYTES)
            .override_global(names::FIXED, &config, true)
            .load(crate::ebpf::DROPS_OBJECT)
            .map_err(|e| DropError::Load(format!("{e:#}")))?;
        load_raw_tracepoints(&mut ebpf, &PROGRAMS)?;
        fill_filter(&mut ebpf, names::ADDRS, addrs)?;
        let drops = take(&mut ebpf, names::DROPS)?;
        let counters = take(&mut ebpf, names::COUNTERS)?;
        let reader = spawn_reader(&mut ebpf, names::EVENTS, events, received)?;
        attach_raw_tracepoints(&mut ebpf, &PROGRAMS)?;
        log::info!(
            "drop probe loaded ({} reasons known), tracing {}",
            reasons.len(),
            describe(addrs)
        );
        Ok(DropProbe {
            _reader: reader,
            _ebpf: ebpf,
            drops,
            counters,
            reasons: Arc::new(reasons),
        })
    }

    fn busy(&self, running: &Vec<[u8; 16]>) -> DropError {
        DropError::Busy {
            running: describe(running),
        }
    }

    fn program_names(&self) -> Vec<&'static str> {
        PROGRAMS.iter().map(|(n, _)| *n).collect()
    }
}

/// The drop tracer of one agent.
pub type DropTracer = Tracer<DropProbe>;

/// A running trace; dropping it ends the trace (and unloads the program if it was the last).
pub struct DropHandle {
    _trace: Handle<DropProbe>,
    /// The trace's id, for [`DropTracer::summary`].
    pub id: u64,
    /// The running kernel's reason names.
    pub reasons: Arc<Reasons>,
}

impl Tracer<DropProbe> {
    /// The running kernel's reason names while loaded.
    pub fn reasons(&self) -> Option<Arc<Reasons>> {
        self.with(|p, _| p.reasons.clone())
    }

    /// Kernel counters while loaded.
    pub fn counters(&self) -> Option<[u64; counter::COUNT as usize]> {
        self.with(|p, _| read_counters(&p.counters))
    }

    /// Starts a trace of drops from or to `addrs` (empty: every drop), loading and attaching
    /// the program if no trace runs. Call it from a tokio runtime (the ring reader is a task).
    pub fn start(self: &Arc<Self>, addrs: &[IpAddr]) -> Result<DropHandle, DropError> {
        let mut addrs: Vec<[u8; 16]> = addrs.iter().copied().map(key_addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let (trace, reasons) = self.begin(addrs, (), |p| {
            let trace = DropTrace {
                table: read_table(&p.drops),
                counters: read_counters(&p.counters),
                lost_agent_base: self.lost_agent.load(Ordering::Relaxed),
                started: Instant::now(),
            };
            (trace, p.reasons.clone())
        })?;
        Ok(DropHandle {
            id: trace.id,
            _trace: trace,
            reasons,
        })
    }

    /// The drops of trace `id` since it started; `None` when no such trace runs.
    pub fn summary(&self, id: u64) -> Option<Summary> {
        self.with_trace(id, |p, trace| {
            let now = read_counters(&p.counters);
            let mut counters = [0; counter::COUNT as usize];
            for (o, (n, b)) in counters.iter_mut().zip(now.iter().zip(trace.counters)) {
                *o = n.saturating_sub(b);
            }
            Summary {
                drops: since(&read_table(&p.drops), &trace.table),
                counters,
                elapsed: trace.started.elapsed(),
                lost_agent: self
                    .lost_agent
                    .load(Ordering::Relaxed)
                    .saturating_sub(trace.lost_agent_base),
            }
        })
    }
}

fn read_table(map: &PerCpuHashMap<MapData, DropKey, DropStats>) -> Table {
    map.iter()
        .flatten()
        .map(|(k, per_cpu)| (k, sum_stats(per_cpu.iter())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, first: u64, last: u64) -> DropStats {
        DropStats {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
        }
    }

    #[test]
    fn per_cpu_copies_are_summed_and_times_span_them() {
        let s = sum_stats(&[stats(2, 50, 60), stats(0, 0, 0), stats(3, 40, 55)]);
        assert_eq!(s, stats(5, 40, 60));
    }

    #[test]
    fn a_trace_sees_only_drops_since_it_started() {
        let k = |reason| DropKey {
            reason,
            ..DropKey::default()
        };
        let base: Table = [(k(2), stats(4, 1, 2)), (k(3), stats(1, 1, 1))].into();
        let now: Table = [
            (k(2), stats(10, 1, 9)),
            (k(3), stats(1, 1, 1)),
            (k(5), stats(7, 3, 8)),
        ]
        .into();
        let d = since(&now, &base);
        assert_eq!(d.len(), 2, "reason 3 did not drop again: {d:?}");
        assert_eq!((d[&k(2)].packets, d[&k(2)].bytes), (6, 600));
        assert_eq!(d[&k(5)], stats(7, 3, 8));
    }

    #[test]
    fn reasons_are_named_from_the_enum_and_unknown_ones_by_number() {
        let r = Reasons::from_enum(&[
            ("SKB_NOT_DROPPED_YET".into(), 0),
            ("SKB_CONSUMED".into(), 1),
            ("SKB_DROP_REASON_NO_SOCKET".into(), 3),
        ]);
        assert_eq!(r.name(3), "NO_SOCKET");
        assert_eq!(r.name(77), "reason 77");
        assert_eq!(r.code("CONSUMED"), Some(1));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn the_running_kernel_gives_every_offset() {
        let Ok(btf) = Btf::vmlinux() else {
            eprintln!("SKIPPED: no readable kernel BTF");
            return;
        };
        let (c, r) = kernel_config(&btf).expect("this kernel's BTF has every member");
        assert_eq!(r.name(c.reason_consumed), "CONSUMED");
        assert!(r.code("NO_SOCKET").is_some() && r.code("NETFILTER_DROP").is_some());
        assert_ne!(c.skb_head, c.skb_len);
    }
}
