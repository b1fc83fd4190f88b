//! What the on-demand kernel tracers (`syscalls`, `drops`, `tcp`) share: the [`Tracer`] that
//! loads a tracer's object for the first trace and unloads it after the last, the helpers that
//! take its maps and programs, the kernel's address form for their filters, per-CPU counter
//! sums, and the ring-buffer reader feeding their fan-out.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::broadcast,
    task::JoinHandle,
};

/// A tracer's kernel object while loaded: its programs attached, its maps and ring reader.
/// A [`Tracer`] loads one for its first trace and drops it (detaching) after its last.
pub trait Object: Send + Sized + 'static {
    /// The records its ring buffer carries.
    type Event: Copy + Send + 'static;
    /// What concurrent traces must agree on to share the object (their addresses, target).
    type Key: PartialEq + Send;
    /// What each running trace keeps (a baseline, its options).
    type Trace: Send;
    /// What loading needs besides the key (`()` for most).
    type Args;
    /// Why a trace cannot start.
    type Error: std::fmt::Display;
    /// Fan-out queue length, in events.
    const QUEUE: usize;
    /// The trace in log lines (`drop trace`).
    const TRACE: &'static str;
    /// Its programs in log lines (`the drop probe`).
    const PROBES: &'static str;
    /// Loads and attaches the object for `key`; its ring reader counts what it reads in
    /// `received` and fans it out through `events`.
    fn load(
        key: &Self::Key,
        args: Self::Args,
        events: broadcast::Sender<Self::Event>,
        received: Arc<AtomicU64>,
    ) -> Result<Self, Self::Error>;
    /// The error for a trace of another key than `running`, this object's.
    fn busy(&self, running: &Self::Key) -> Self::Error;
    /// The names of its programs.
    fn program_names(&self) -> Vec<&'static str>;
    /// Adjusts the object to the traces now running (some), after one started or ended.
    fn traces_changed(&mut self, _traces: &BTreeMap<u64, Self::Trace>) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The loaded object, what it was loaded for, and the traces sharing it.
struct Running<O: Object> {
    object: O,
    key: O::Key,
    traces: BTreeMap<u64, O::Trace>,
}

/// An on-demand tracer of one agent: the first trace loads its [`Object`], traces of the same
/// key share it, and the last one to end unloads it.
pub struct Tracer<O: Object> {
    running: Mutex<Option<Running<O>>>,
    events: broadcast::Sender<O::Event>,
    next_id: AtomicU64,
    /// Events read from the ring buffer.
    pub events_received: Arc<AtomicU64>,
    /// Events a stream missed because it fell behind the agent's queue.
    pub lost_agent: AtomicU64,
}

impl<O: Object> Default for Tracer<O> {
    fn default() -> Self {
        Tracer {
            running: Mutex::new(None),
            events: broadcast::channel(O::QUEUE).0,
            next_id: AtomicU64::new(1),
            events_received: Arc::default(),
            lost_agent: AtomicU64::new(0),
        }
    }
}

/// A running trace; dropping it ends the trace (and unloads the object if it was the last).
pub struct Handle<O: Object> {
    tracer: Arc<Tracer<O>>,
    /// The trace's id.
    pub id: u64,
}

impl<O: Object> Drop for Handle<O> {
    fn drop(&mut self) {
        self.tracer.end(self.id);
    }
}

impl<O: Object> Tracer<O> {
    /// Subscribes to ring-buffer events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<O::Event> {
        self.events.subscribe()
    }

    /// Names of the loaded programs (none while no trace runs).
    pub fn program_names(&self) -> Vec<&'static str> {
        self.with(|o, _| o.program_names()).unwrap_or_default()
    }

    /// `f` of the loaded object and its traces; `None` while no trace runs.
    pub fn with<R>(&self, f: impl FnOnce(&O, &BTreeMap<u64, O::Trace>) -> R) -> Option<R> {
        let guard = self.running.lock().expect("tracer lock");
        guard.as_ref().map(|r| f(&r.object, &r.traces))
    }

    /// Starts a trace of `key`, loading the object (with `args`) if no trace runs, refused
    /// while traces of another key run; `trace` makes the trace's state and what the caller
    /// wants of the object. Call it from a tokio runtime (the ring reader is a task).
    pub fn begin<R>(
        self: &Arc<Self>,
        key: O::Key,
        args: O::Args,
        trace: impl FnOnce(&O) -> (O::Trace, R),
    ) -> Result<(Handle<O>, R), O::Error> {
        let mut guard = self.running.lock().expect("tracer lock");
        if let Some(r) = guard.as_ref()
            && r.key != key
        {
            return Err(r.object.busy(&r.key));
        }
        if guard.is_none() {
            let object = O::load(
                &key,
                args,
                self.events.clone(),
                self.events_received.clone(),
            )?;
            *guard = Some(Running {
                object,
                key,
                traces: BTreeMap::new(),
            });
        }
        let running = guard.as_mut().expect("loaded above");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (state, out) = trace(&running.object);
        running.traces.insert(id, state);
        let changed = running.object.traces_changed(&running.traces);
        drop(guard);
        let handle = Handle {
            tracer: self.clone(),
            id,
        };
        // On an error the handle is dropped here, ending the trace it would have kept.
        changed.map(|()| (handle, out))
    }

    /// `f` of the loaded object and trace `id`; `None` when no such trace runs.
    pub fn with_trace<R>(&self, id: u64, f: impl FnOnce(&O, &O::Trace) -> R) -> Option<R> {
        let guard = self.running.lock().expect("tracer lock");
        let running = guard.as_ref()?;
        Some(f(&running.object, running.traces.get(&id)?))
    }

    /// Ends every trace and unloads the object (agent shutdown).
    pub fn shutdown(&self) {
        *self.running.lock().expect("tracer lock") = None;
    }

    fn end(&self, id: u64) {
        let mut guard = self.running.lock().expect("tracer lock");
        let Some(running) = guard.as_mut() else {
            return;
        };
        running.traces.remove(&id);
        if running.traces.is_empty() {
            log::info!("last {} ended: unloading {}", O::TRACE, O::PROBES);
            *guard = None;
        } else if let Err(e) = running.object.traces_changed(&running.traces) {
            log::warn!("{e}");
        }
    }
}

/// Why a map or program of a loaded object could not be used; each tracer's error says it
/// as its own.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The object lacks a map.
    #[error("the object has no map {0}")]
    NoMap(&'static str),
    /// A map is not of the expected kind, or could not be written.
    #[error("writing map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// The object lacks a program.
    #[error("the object has no program {0}")]
    NoProgram(&'static str),
    /// A program is not of the expected kind.
    #[error("{name}: {source}")]
    ProgramKind {
        /// Program name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// The kernel refused a program.
    #[error("{name}: {source:#}")]
    ProgramLoad {
        /// Program name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// A program could not be attached.
    #[error("attaching {name} to {tracepoint}: {source}")]
    Attach {
        /// Program name.
        name: &'static str,
        /// The raw tracepoint.
        tracepoint: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// The ring buffer could not be polled.
    #[error("polling the ring buffer: {0}")]
    Poll(#[source] std::io::Error),
}

/// Takes map `name` out of `ebpf` as an `M`.
pub fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, ObjectError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ObjectError::NoMap(name))?;
    M::try_from(map).map_err(|source| ObjectError::Map { name, source })
}

/// Raw tracepoint program `name` of `ebpf`.
pub fn raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, ObjectError> {
    ebpf.program_mut(name)
        .ok_or(ObjectError::NoProgram(name))?
        .try_into()
        .map_err(|source| ObjectError::ProgramKind { name, source })
}

/// Loads the raw tracepoint programs `(name, tracepoint)` into the kernel.
pub fn load_raw_tracepoints(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), ObjectError> {
    for &(name, _) in programs {
        raw_tracepoint(ebpf, name)?
            .load()
            .map_err(|source| ObjectError::ProgramLoad { name, source })?;
    }
    Ok(())
}

/// Attaches the loaded raw tracepoint programs `(name, tracepoint)`.
pub fn attach_raw_tracepoints(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), ObjectError> {
    for &(name, tracepoint) in programs {
        raw_tracepoint(ebpf, name)?
            .attach(tracepoint)
            .map_err(|source| ObjectError::Attach {
                name,
                tracepoint,
                source,
            })?;
    }
    Ok(())
}

/// Fills the address filter map `name` with `addrs` (left alone when there are none: the
/// program then filters nothing).
pub fn fill_filter(
    ebpf: &mut Ebpf,
    name: &'static str,
    addrs: &[[u8; 16]],
) -> Result<(), ObjectError> {
    if addrs.is_empty() {
        return Ok(());
    }
    let mut m: BpfHashMap<MapData, [u8; 16], u8> = take(ebpf, name)?;
    for a in addrs {
        m.insert(a, 1, 0)
            .map_err(|source| ObjectError::Map { name, source })?;
    }
    Ok(())
}

/// The task reading an object's ring buffer; aborted when dropped (the object unloads).
pub struct RingReader(JoinHandle<()>);

impl Drop for RingReader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes ring buffer map `name` out of `ebpf` and starts [`read_ring`] on it as a task.
pub fn spawn_reader<T: Copy + Send + 'static>(
    ebpf: &mut Ebpf,
    name: &'static str,
    tx: broadcast::Sender<T>,
    received: Arc<AtomicU64>,
) -> Result<RingReader, ObjectError> {
    let ring: RingBuf<MapData> = take(ebpf, name)?;
    // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open while registered.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| ObjectError::Poll(e.into_parts().1))?;
    Ok(RingReader(tokio::spawn(read_ring(ring, tx, received))))
}

/// An address as the kernel filters and keys store it (IPv4-mapped).
pub fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A filter's addresses in words ("every address" when empty).
pub fn describe(addrs: &[[u8; 16]]) -> String {
    if addrs.is_empty() {
        return "every address".into();
    }
    let shown: Vec<String> = addrs
        .iter()
        .map(|a| std::net::Ipv6Addr::from(*a).to_canonical().to_string())
        .collect();
    shown.join(", ")
}

/// A per-CPU counter array's single entry, summed over CPUs.
pub fn read_counters<const N: usize>(map: &PerCpuArray<MapData, [u64; N]>) -> [u64; N] {
    let mut out = [0u64; N];
    if let Ok(per_cpu) = map.get(&0, 0) {
        for cpu in per_cpu.iter() {
            for (o, v) in out.iter_mut().zip(cpu) {
                *o += v;
            }
        }
    }
    out
}

/// Reads `T` records from the ring buffer whenever the kernel says it is readable, counts them
/// in `received` and fans them out through `tx`.
pub async fn read_ring<T: Copy + Send + 'static>(
    mut ring: AsyncFd<RingBuf<MapData>>,
    tx: broadcast::Sender<T>,
    received: Arc<AtomicU64>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("tracer ring buffer poll failed: {e}");
                return;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if item.len() < size_of::<T>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `T` (checked length), a plain `repr(C)` record;
            // read unaligned.
            let ev: T = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            received.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(ev);
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object that counts its loads and unloads in its tracer's `events_received` (see
    /// [`loads_unloads`]), and refuses an odd number of traces when its key says so.
    struct Fake {
        counts: Arc<AtomicU64>,
        refuse_odd: bool,
    }

    const UNLOAD: u64 = 1 << 32;

    /// How often `t` loaded and unloaded its object.
    fn loads_unloads(t: &Tracer<Fake>) -> (u64, u64) {
        let v = t.events_received.load(Ordering::Relaxed);
        (v % UNLOAD, v / UNLOAD)
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.counts.fetch_add(UNLOAD, Ordering::Relaxed);
        }
    }

    impl Object for Fake {
        type Event = u8;
        /// The key, and whether `traces_changed` refuses an odd number of traces.
        type Key = (u32, bool);
        type Trace = ();
        type Args = ();
        type Error = String;
        const QUEUE: usize = 4;
        const TRACE: &'static str = "fake trace";
        const PROBES: &'static str = "the fake probe";

        fn load(
            key: &(u32, bool),
            (): (),
            _events: broadcast::Sender<u8>,
            received: Arc<AtomicU64>,
        ) -> Result<Self, String> {
            received.fetch_add(1, Ordering::Relaxed);
            Ok(Fake {
                counts: received,
                refuse_odd: key.1,
            })
        }

        fn busy(&self, running: &(u32, bool)) -> String {
            format!("busy with {}", running.0)
        }

        fn program_names(&self) -> Vec<&'static str> {
            vec!["fake"]
        }

        fn traces_changed(&mut self, traces: &BTreeMap<u64, ()>) -> Result<(), String> {
            if self.refuse_odd && traces.len() % 2 == 1 {
                return Err(format!("{} traces", traces.len()));
            }
            Ok(())
        }
    }

    #[test]
    fn the_first_trace_loads_traces_of_one_key_share_and_the_last_unloads() {
        let tracer: Arc<Tracer<Fake>> = Arc::default();
        assert!(tracer.program_names().is_empty());
        let (a, ()) = tracer.begin((1, false), (), |_| ((), ())).unwrap();
        let (b, ()) = tracer.begin((1, false), (), |_| ((), ())).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(loads_unloads(&tracer), (1, 0), "one load shared");
        assert_eq!(tracer.program_names(), vec!["fake"]);
        let Err(busy) = tracer.begin((2, false), (), |_| ((), ())) else {
            panic!("another key while key 1 runs");
        };
        assert_eq!(busy, "busy with 1");
        assert_eq!(tracer.with(|_, traces| traces.len()), Some(2));
        drop(a);
        assert_eq!(loads_unloads(&tracer), (1, 0), "b still runs");
        assert!(tracer.with_trace(b.id, |_, _| ()).is_some());
        drop(b);
        assert_eq!(loads_unloads(&tracer), (1, 1));
        assert!(tracer.with(|_, _| ()).is_none());
        assert!(tracer.program_names().is_empty());
        let (c, ()) = tracer.begin((2, false), (), |_| ((), ())).unwrap();
        assert_eq!(
            loads_unloads(&tracer),
            (2, 1),
            "loaded again for the next trace"
        );
        tracer.shutdown();
        assert_eq!(loads_unloads(&tracer), (2, 2));
        drop(c);
    }

    #[test]
    fn a_trace_the_object_refuses_is_ended_not_left_running() {
        let tracer: Arc<Tracer<Fake>> = Arc::default();
        let Err(e) = tracer.begin((1, true), (), |_| ((), ())) else {
            panic!("one trace is odd: refused");
        };
        assert_eq!(e, "1 traces");
        assert!(tracer.with(|_, _| ()).is_none(), "unloaded with it");
        assert_eq!(loads_unloads(&tracer), (1, 1));
    }

    #[test]
    fn ipv4_addresses_are_keyed_mapped() {
        let a = key_addr("10.1.2.3".parse().unwrap());
        assert_eq!(&a[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        assert_eq!(describe(&[a]), "10.1.2.3");
        assert_eq!(describe(&[]), "every address");
    }
}
