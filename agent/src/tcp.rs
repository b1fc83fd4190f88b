//! The TCP lifecycle tracer: loads the `orb8-tcp` object on the first trace (with the socket
//! member offsets of the running kernel, from its BTF), fills its address filter, reads its
//! events and counters, and unloads it when the last trace ends.
//!
//! Traces share the kernel programs, so concurrent traces must ask for the same addresses;
//! state-change events are sent by the kernel while at least one trace asks for them.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, atomic::AtomicU64},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
};
use orb8_common::tcp::{TcpConfig, TcpEvent, counter, names};
use tokio::sync::broadcast;

use crate::btf::{Btf, BtfError};
use crate::tracer::{
    Handle, Object, ObjectError, RingReader, Tracer, attach_raw_tracepoints, describe, fill_filter,
    key_addr, load_raw_tracepoints, read_counters, spawn_reader, take,
};

/// Why a TCP trace could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The kernel's BTF lacks what the programs need.
    #[error("reading the kernel's types: {0}")]
    Btf(#[from] BtfError),
    /// A kernel struct member has a size the programs do not read.
    #[error("{member} is {size} bytes in this kernel; the TCP probes read {expected}")]
    MemberSize {
        /// `struct.member`.
        member: String,
        /// Its size here.
        size: u32,
        /// What the probes read.
        expected: u32,
    },
    /// The object could not be loaded or its programs attached.
    #[error("loading the TCP probes: {0}")]
    Load(String),
    /// Another trace with other addresses is running.
    #[error("this agent is already tracing TCP of {running}; one address set at a time")]
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

/// The programs' settings for the running kernel (`btf`).
pub fn kernel_config(btf: &Btf) -> Result<TcpConfig, TcpError> {
    let member = |ty: &str, path: &str, expected: u32| -> Result<u32, TcpError> {
        let f = btf.member(ty, path)?;
        if f.size != expected {
            return Err(TcpError::MemberSize {
                member: format!("{ty}.{path}"),
                size: f.size,
                expected,
            });
        }
        Ok(f.offset)
    };
    let common =
        |path: &str, expected: u32| member("sock", &format!("__sk_common.{path}"), expected);
    Ok(TcpConfig {
        family: common("skc_family", 2)?,
        daddr: common("skc_daddr", 4)?,
        saddr: common("skc_rcv_saddr", 4)?,
        dport: common("skc_dport", 2)?,
        num: common("skc_num", 2)?,
        v6_daddr: common("skc_v6_daddr", 16)?,
        v6_saddr: common("skc_v6_rcv_saddr", 16)?,
        net: common("skc_net.net", 8)?,
        net_inum: member("net", "ns.inum", 4)?,
        protocol: member("sock", "sk_protocol", 2)?,
        srtt_us: member("tcp_sock", "srtt_us", 4)?,
        filter_addrs: 0,
    })
}

/// The TCP probes while loaded (see [`Object`]).
pub struct TcpProbes {
    _reader: RingReader,
    _ebpf: Ebpf,
    states_map: Array<MapData, u32>,
    /// Whether the kernel sends every state change.
    states: bool,
    counters: PerCpuArray<MapData, [u64; counter::COUNT as usize]>,
}

/// The programs and the raw tracepoints they attach to.
const PROGRAMS: [(&str, &str); 4] = [
    (names::SET_STATE, "inet_sock_set_state"),
    (names::RETRANSMIT, "tcp_retransmit_skb"),
    (names::RECEIVE_RESET, "tcp_receive_reset"),
    (names::SEND_RESET, "tcp_send_reset"),
];

impl From<ObjectError> for TcpError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Map { name, source } => TcpError::Map { name, source },
            other => TcpError::Load(other.to_string()),
        }
    }
}

impl Object for TcpProbes {
    type Event = TcpEvent;
    type Key = Vec<[u8; 16]>;
    /// Whether the trace asked for every state change.
    type Trace = bool;
    type Args = ();
    type Error = TcpError;
    const QUEUE: usize = crate::defaults::TCP_EVENT_QUEUE;
    const TRACE: &'static str = "TCP trace";
    const PROBES: &'static str = "the TCP probes";

    fn load(
        addrs: &Vec<[u8; 16]>,
        (): (),
        events: broadcast::Sender<TcpEvent>,
        received: Arc<AtomicU64>,
    ) -> Result<Self, TcpError> {
        let btf = Btf::vmlinux()?;
        let mut config = kernel_config(&btf)?;
        config.filter_addrs = u32::from(!addrs.is_empty());
        let mut ebpf = EbpfLoader::without_btf()
            .map_max_entries(names::EVENTS, crate::defaults::TCP_RINGBUF_BYTES)
            .override_global(names::FIXED, &config, true)
            .load(crate::ebpf::TCP_OBJECT)
            .map_err(|e| TcpError::Load(format!("{e:#}")))?;
        load_raw_tracepoints(&mut ebpf, &PROGRAMS)?;
        fill_filter(&mut ebpf, names::ADDRS, addrs)?;
        let states_map = take(&mut ebpf, names::STATES)?;
        let counters = take(&mut ebpf, names::COUNTERS)?;
        let reader = spawn_reader(&mut ebpf, names::EVENTS, events, received)?;
        attach_raw_tracepoints(&mut ebpf, &PROGRAMS)?;
        log::info!("TCP probes loaded, tracing {}", describe(addrs));
        Ok(TcpProbes {
            _reader: reader,
            _ebpf: ebpf,
            states_map,
            states: false,
            counters,
        })
    }

    fn busy(&self, running: &Vec<[u8; 16]>) -> TcpError {
        TcpError::Busy {
            running: describe(running),
        }
    }

    fn program_names(&self) -> Vec<&'static str> {
        PROGRAMS.iter().map(|(n, _)| *n).collect()
    }

    /// Has the kernel send every state change while some trace asks for them.
    fn traces_changed(&mut self, traces: &BTreeMap<u64, bool>) -> Result<(), TcpError> {
        let want = traces.values().any(|s| *s);
        if want != self.states {
            self.states_map
                .set(0, u32::from(want), 0)
                .map_err(|source| TcpError::Map {
                    name: names::STATES,
                    source,
                })?;
            self.states = want;
        }
        Ok(())
    }
}

/// The TCP tracer of one agent.
pub type TcpTracer = Tracer<TcpProbes>;

/// A running trace; dropping it ends the trace (and unloads the programs if it was the last).
pub type TcpHandle = Handle<TcpProbes>;

impl Tracer<TcpProbes> {
    /// Kernel counters while loaded.
    pub fn counters(&self) -> Option<[u64; counter::COUNT as usize]> {
        self.with(|p, _| read_counters(&p.counters))
    }

    /// Starts a trace of connections from or to `addrs` (empty: every connection), with every
    /// state change when `states`, loading the programs if no trace runs. Call it from a tokio
    /// runtime.
    pub fn start(self: &Arc<Self>, addrs: &[IpAddr], states: bool) -> Result<TcpHandle, TcpError> {
        let mut addrs: Vec<[u8; 16]> = addrs.iter().copied().map(key_addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        Ok(self.begin(addrs, (), |_| (states, ()))?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_gives_every_socket_offset() {
        let Ok(btf) = Btf::vmlinux() else {
            eprintln!("SKIPPED: no readable kernel BTF");
            return;
        };
        let c = kernel_config(&btf).expect("this kernel's BTF has every member");
        assert_ne!(c.daddr, c.saddr);
        assert_eq!(c.v6_daddr % 4, 0);
    }
}
