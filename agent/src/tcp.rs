//! The TCP lifecycle tracer: loads the `orb8-tcp` object on the first trace (with the socket
//! member offsets of the running kernel, from its BTF), fills its address filter, reads its
//! events and counters, and unloads it when the last trace ends.
//!
//! Traces share the kernel programs, so concurrent traces must ask for the same addresses;
//! state-change events are sent by the kernel while at least one trace asks for them.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use orb8_common::tcp::{TcpConfig, TcpEvent, counter, names};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::broadcast,
    task::JoinHandle,
};

use crate::btf::{Btf, BtfError};
use crate::tracer::{describe, key_addr, read_counters, read_ring};

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

struct Loaded {
    _ebpf: Ebpf,
    states_map: Array<MapData, u32>,
    states: bool,
    counters: PerCpuArray<MapData, [u64; counter::COUNT as usize]>,
    reader: JoinHandle<()>,
    addrs: Vec<[u8; 16]>,
    /// Open traces: whether each asked for every state change.
    traces: BTreeMap<u64, bool>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The TCP tracer of one agent.
pub struct TcpTracer {
    loaded: Mutex<Option<Loaded>>,
    events: broadcast::Sender<TcpEvent>,
    next_id: AtomicU64,
    /// Events read from the ring buffer.
    pub events_received: Arc<AtomicU64>,
    /// Events a stream missed because it fell behind the agent's queue.
    pub lost_agent: AtomicU64,
}

impl Default for TcpTracer {
    fn default() -> Self {
        TcpTracer {
            loaded: Mutex::new(None),
            events: broadcast::channel(crate::defaults::TCP_EVENT_QUEUE).0,
            next_id: AtomicU64::new(1),
            events_received: Arc::default(),
            lost_agent: AtomicU64::new(0),
        }
    }
}

/// A running trace; dropping it ends the trace (and unloads the programs if it was the last).
pub struct TcpHandle {
    tracer: Arc<TcpTracer>,
    /// The trace's id.
    pub id: u64,
}

impl Drop for TcpHandle {
    fn drop(&mut self) {
        self.tracer.end(self.id);
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> TcpError {
    move |source| TcpError::Map { name, source }
}

fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, TcpError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| TcpError::Load(format!("the object has no map {name}")))?;
    M::try_from(map).map_err(map_err(name))
}

const PROGRAMS: [(&str, &str); 4] = [
    (names::SET_STATE, "inet_sock_set_state"),
    (names::RETRANSMIT, "tcp_retransmit_skb"),
    (names::RECEIVE_RESET, "tcp_receive_reset"),
    (names::SEND_RESET, "tcp_send_reset"),
];

impl TcpTracer {
    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TcpEvent> {
        self.events.subscribe()
    }

    /// Names of the loaded programs (none while no trace runs).
    pub fn program_names(&self) -> Vec<&'static str> {
        if self.loaded.lock().expect("tracer lock").is_some() {
            PROGRAMS.iter().map(|(n, _)| *n).collect()
        } else {
            Vec::new()
        }
    }

    /// Kernel counters while loaded.
    pub fn counters(&self) -> Option<[u64; counter::COUNT as usize]> {
        self.loaded
            .lock()
            .expect("tracer lock")
            .as_ref()
            .map(|l| read_counters(&l.counters))
    }

    /// Starts a trace of connections from or to `addrs` (empty: every connection), with every
    /// state change when `states`, loading the programs if no trace runs. Call it from a tokio
    /// runtime.
    pub fn start(self: &Arc<Self>, addrs: &[IpAddr], states: bool) -> Result<TcpHandle, TcpError> {
        let mut addrs: Vec<[u8; 16]> = addrs.iter().copied().map(key_addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let mut guard = self.loaded.lock().expect("tracer lock");
        if let Some(l) = guard.as_ref()
            && l.addrs != addrs
        {
            return Err(TcpError::Busy {
                running: describe(&l.addrs),
            });
        }
        if guard.is_none() {
            *guard = Some(self.load(addrs)?);
        }
        let loaded = guard.as_mut().expect("loaded above");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        loaded.traces.insert(id, states);
        set_states(loaded)?;
        Ok(TcpHandle {
            tracer: self.clone(),
            id,
        })
    }

    /// Ends every trace and unloads the programs (agent shutdown).
    pub fn shutdown(&self) {
        *self.loaded.lock().expect("tracer lock") = None;
    }

    fn end(&self, id: u64) {
        let mut guard = self.loaded.lock().expect("tracer lock");
        let Some(loaded) = guard.as_mut() else {
            return;
        };
        loaded.traces.remove(&id);
        if loaded.traces.is_empty() {
            log::info!("last TCP trace ended: unloading the TCP probes");
            *guard = None;
        } else if let Err(e) = set_states(loaded) {
            log::warn!("{e}");
        }
    }

    fn load(self: &Arc<Self>, addrs: Vec<[u8; 16]>) -> Result<Loaded, TcpError> {
        let btf = Btf::vmlinux()?;
        let mut config = kernel_config(&btf)?;
        config.filter_addrs = u32::from(!addrs.is_empty());
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries(names::EVENTS, crate::defaults::TCP_RINGBUF_BYTES)
            .override_global(names::FIXED, &config, true)
            .load(crate::ebpf::TCP_OBJECT)
            .map_err(|e| TcpError::Load(format!("{e:#}")))?;
        for (name, _) in PROGRAMS {
            program(&mut ebpf, name)?
                .load()
                .map_err(|e| TcpError::Load(format!("{name}: {e:#}")))?;
        }
        if !addrs.is_empty() {
            let mut m: BpfHashMap<MapData, [u8; 16], u8> = take(&mut ebpf, names::ADDRS)?;
            for a in &addrs {
                m.insert(a, 1, 0).map_err(map_err(names::ADDRS))?;
            }
        }
        let states_map = take(&mut ebpf, names::STATES)?;
        let counters = take(&mut ebpf, names::COUNTERS)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, names::EVENTS)?;
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open while registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| TcpError::Load(format!("polling the ring buffer: {e}")))?;
        let reader = tokio::spawn(read_ring(
            ring,
            self.events.clone(),
            self.events_received.clone(),
        ));
        for (name, tp) in PROGRAMS {
            program(&mut ebpf, name)?
                .attach(tp)
                .map_err(|e| TcpError::Load(format!("attaching {name} to {tp}: {e}")))?;
        }
        log::info!("TCP probes loaded, tracing {}", describe(&addrs));
        Ok(Loaded {
            _ebpf: ebpf,
            states_map,
            states: false,
            counters,
            reader,
            addrs,
            traces: BTreeMap::new(),
        })
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut RawTracePoint, TcpError> {
    ebpf.program_mut(name)
        .ok_or_else(|| TcpError::Load(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|e| TcpError::Load(format!("{name}: {e}")))
}

fn set_states(loaded: &mut Loaded) -> Result<(), TcpError> {
    let want = loaded.traces.values().any(|s| *s);
    if want != loaded.states {
        loaded
            .states_map
            .set(0, u32::from(want), 0)
            .map_err(map_err(names::STATES))?;
        loaded.states = want;
    }
    Ok(())
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
