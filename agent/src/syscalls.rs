//! The syscall tracer: loads the `orb8-syscalls` object on the first trace, fills its filter
//! maps, reads its counts and events, and unloads it (programs detached, every filter map
//! gone) when the last trace ends. The flow probes never pay for it.
//!
//! How the programs hook syscalls ([`Probes`]): an allow-list of at most [`FENTRY_SLOTS`]
//! syscalls is traced with fentry/fexit programs on those syscalls' kernel functions, found in
//! the kernel's BTF, so no other syscall or process pays anything; where that cannot be done
//! (no allow-list, a longer one, no BTF, no such function, or the kernel refuses tracing
//! programs, as some kernels do with EPERM) the raw `sys_enter`/`sys_exit` tracepoints are used,
//! and the trace says which and why. The counting is the same kernel code either way.
//!
//! Traces share the kernel programs, so concurrent traces must ask for the same target and
//! syscalls; each gets the counts since it started (a baseline is subtracted), and stream-mode
//! events are sent while at least one trace asks for them.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{FEntry, FExit, RawTracePoint},
};
use aya_obj::btf::{Btf, BtfKind};
use orb8_common::sys::{
    ErrnoKey, FENTRY_SLOTS, HIST_BUCKETS, MAX_SYSCALLS, SysConfig, SysEvent, SysStats, counter,
    filter, names,
};
use orb8_syscalls::Arch;
use tokio::sync::broadcast;

use crate::cgroups::{self, Resolved, Target};
use crate::tracer::{
    Handle, Object, ObjectError, RingReader, Tracer, read_counters, spawn_reader, take,
};

/// Why a trace could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyscallError {
    /// This agent's architecture has no syscall table.
    #[error("syscall tracing is not supported on {0}")]
    UnsupportedArch(&'static str),
    /// The object could not be loaded or its programs attached.
    #[error("loading the syscall probes: {0}")]
    Load(String),
    /// Another trace with another target or syscall list is running.
    #[error("this agent is already tracing {running}; one target at a time")]
    Busy {
        /// What is being traced.
        running: String,
    },
    /// A filter map could not be written.
    #[error("writing map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// What tells the agent that a trace's target is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitWatch {
    /// The process with this PID exited.
    Pid(u32),
    /// The cgroup directory was removed.
    Dir(PathBuf),
    /// Every one of these cgroup directories was removed (a pod's containers).
    Dirs(Vec<PathBuf>),
}

impl ExitWatch {
    /// Why the target is gone, or `None` while it is there.
    pub fn check(&self) -> Option<String> {
        match self {
            ExitWatch::Pid(pid) => {
                cgroups::process_exited(*pid).then(|| format!("process {pid} exited"))
            }
            ExitWatch::Dir(p) => (!p.exists()).then(|| format!("cgroup {} removed", p.display())),
            ExitWatch::Dirs(ps) => ps
                .iter()
                .all(|p| !p.exists())
                .then(|| "every container of the pod is gone".to_string()),
        }
    }
}

/// How a trace's kernel programs hook syscalls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probes {
    /// fentry/fexit programs on these kernel functions, one per allow-listed syscall.
    Fentry {
        /// The kernel functions, in syscall-number order.
        functions: Vec<String>,
    },
    /// The `raw_syscalls` tracepoints `sys_enter`/`sys_exit`.
    RawTracepoints {
        /// Why fentry was not used, for an allow-list (`None` without one).
        why_not_fentry: Option<String>,
    },
}

impl Probes {
    /// `fentry` or `raw_tracepoint`: the stable name on the wire and in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Probes::Fentry { .. } => "fentry",
            Probes::RawTracepoints { .. } => "raw_tracepoint",
        }
    }

    /// Why fentry was not used, or an empty string.
    pub fn note(&self) -> String {
        match self {
            Probes::RawTracepoints {
                why_not_fentry: Some(why),
            } => why.clone(),
            _ => String::new(),
        }
    }

    /// Names of the programs these probes load.
    fn program_names(&self) -> Vec<&'static str> {
        match self {
            Probes::Fentry { functions } => (0..functions.len())
                .flat_map(|i| [names::FENTRY[i], names::FEXIT[i]])
                .collect(),
            Probes::RawTracepoints { .. } => vec![names::ENTER, names::EXIT],
        }
    }
}

/// The kernel functions that may implement syscall `name` on `arch`, most likely first: the
/// architecture's syscall-table entry (`__x64_sys_openat`, taking `pt_regs`), then the
/// function behind it (`__do_sys_getppid`, which BTF keeps where the entry is an alias).
pub fn kernel_functions(arch: Arch, name: &str) -> [String; 2] {
    let entry = match arch {
        Arch::X86_64 => "__x64_sys_",
        Arch::Aarch64 => "__arm64_sys_",
    };
    [format!("{entry}{name}"), format!("__do_sys_{name}")]
}

/// A kernel snapshot of the tracer's counts, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// By syscall number (only syscalls called at least once).
    pub stats: BTreeMap<u32, SysStats>,
    /// Failed calls by (syscall, errno).
    pub errnos: BTreeMap<(u32, u32), u64>,
    /// Kernel counters, indexed by `sys::counter`.
    pub counters: [u64; counter::COUNT as usize],
}

impl Totals {
    /// What happened between `base` and `self` (a later snapshot of the same maps).
    pub fn since(&self, base: &Totals) -> Totals {
        let mut stats = BTreeMap::new();
        for (nr, s) in &self.stats {
            let b = base.stats.get(nr).copied().unwrap_or_default();
            let mut d = SysStats {
                calls: s.calls.saturating_sub(b.calls),
                errors: s.errors.saturating_sub(b.errors),
                total_ns: s.total_ns.saturating_sub(b.total_ns),
                hist: [0; HIST_BUCKETS],
            };
            for (o, (x, y)) in d.hist.iter_mut().zip(s.hist.iter().zip(b.hist.iter())) {
                *o = x.saturating_sub(*y);
            }
            if d.calls > 0 {
                stats.insert(*nr, d);
            }
        }
        let errnos = self
            .errnos
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(base.errnos.get(k).copied().unwrap_or(0));
                (d > 0).then_some((*k, d))
            })
            .collect();
        let mut counters = [0; counter::COUNT as usize];
        for (o, (x, y)) in counters
            .iter_mut()
            .zip(self.counters.iter().zip(base.counters.iter()))
        {
            *o = x.saturating_sub(*y);
        }
        Totals {
            stats,
            errnos,
            counters,
        }
    }
}

/// Sums per-CPU copies of one syscall's statistics.
pub fn sum_stats<'a>(cpus: impl IntoIterator<Item = &'a SysStats>) -> SysStats {
    let mut out = SysStats::default();
    for s in cpus {
        out.calls += s.calls;
        out.errors += s.errors;
        out.total_ns += s.total_ns;
        for (o, h) in out.hist.iter_mut().zip(s.hist.iter()) {
            *o += h;
        }
    }
    out
}

/// A trace's counts since it started.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The counts.
    pub totals: Totals,
    /// Time since the trace started.
    pub elapsed: Duration,
    /// Why the target is gone, when it is.
    pub exited: Option<String>,
    /// Stream events the agent's queue dropped since the trace started.
    pub lost_agent: u64,
}

/// What the running programs filter on; traces must agree on it to share them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterKey {
    resolved: Resolved,
    syscalls: Vec<u32>,
}

/// What a running syscall trace keeps: the counts when it started, and its options.
pub struct SyscallTrace {
    baseline: Totals,
    lost_agent_base: u64,
    started: Instant,
    stream: bool,
    watch: ExitWatch,
}

/// The syscall probes while loaded (see [`Object`]).
pub struct SyscallProbes {
    _reader: RingReader,
    _ebpf: Ebpf,
    probes: Probes,
    config_map: Array<MapData, SysConfig>,
    config: SysConfig,
    stats: PerCpuArray<MapData, SysStats>,
    errnos: PerCpuHashMap<MapData, ErrnoKey, u64>,
    counters: PerCpuArray<MapData, [u64; counter::COUNT as usize]>,
    description: String,
}

/// The syscall tracer of one agent.
pub type SyscallTracer = Tracer<SyscallProbes>;

/// A running trace; dropping it ends the trace (and unloads the programs if it was the last).
pub struct TraceHandle {
    _trace: Handle<SyscallProbes>,
    /// The trace's id, for [`SyscallTracer::summary`].
    pub id: u64,
    /// The target as resolved.
    pub description: String,
    /// How the programs hook syscalls.
    pub probes: Probes,
}

/// The architecture whose syscall numbers this agent's kernel uses.
pub fn arch() -> Result<Arch, SyscallError> {
    Arch::current().ok_or(SyscallError::UnsupportedArch(std::env::consts::ARCH))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> SyscallError {
    move |source| SyscallError::Map { name, source }
}

impl From<ObjectError> for SyscallError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Map { name, source } => SyscallError::Map { name, source },
            other => SyscallError::Load(other.to_string()),
        }
    }
}

impl Tracer<SyscallProbes> {
    /// Kernel counters while loaded.
    pub fn counters(&self) -> Option<[u64; counter::COUNT as usize]> {
        self.with(|p, _| read_counters(&p.counters))
    }

    /// Starts a trace of `target` (syscall numbers `syscalls`, empty for all), loading and
    /// attaching the programs if no trace runs. Call it from a tokio runtime (the ring buffer
    /// reader is a task).
    pub fn start(
        self: &Arc<Self>,
        target: &Target,
        syscalls: Vec<u32>,
        stream: bool,
        watch: ExitWatch,
    ) -> Result<TraceHandle, SyscallError> {
        let arch = arch()?;
        let mut syscalls = syscalls;
        syscalls.sort_unstable();
        syscalls.dedup();
        let key = FilterKey {
            resolved: target.resolved.clone(),
            syscalls,
        };
        let (trace, (description, probes)) = self.begin(key, (arch, target.describe()), |p| {
            let trace = SyscallTrace {
                baseline: read_totals(p),
                lost_agent_base: self.lost_agent.load(Ordering::Relaxed),
                started: Instant::now(),
                stream,
                watch,
            };
            (trace, (p.description.clone(), p.probes.clone()))
        })?;
        Ok(TraceHandle {
            id: trace.id,
            _trace: trace,
            description,
            probes,
        })
    }

    /// The counts of trace `id` since it started; `None` when no such trace runs.
    pub fn summary(&self, id: u64) -> Option<Summary> {
        self.with_trace(id, |p, trace| Summary {
            totals: read_totals(p).since(&trace.baseline),
            elapsed: trace.started.elapsed(),
            exited: trace.watch.check(),
            lost_agent: self
                .lost_agent
                .load(Ordering::Relaxed)
                .saturating_sub(trace.lost_agent_base),
        })
    }
}

impl Object for SyscallProbes {
    type Event = SysEvent;
    type Key = FilterKey;
    type Trace = SyscallTrace;
    /// The architecture, and the target in words.
    type Args = (Arch, String);
    type Error = SyscallError;
    const QUEUE: usize = crate::defaults::SYSCALL_EVENT_QUEUE;
    const TRACE: &'static str = "syscall trace";
    const PROBES: &'static str = "the syscall probes";

    fn busy(&self, _running: &FilterKey) -> SyscallError {
        SyscallError::Busy {
            running: self.description.clone(),
        }
    }

    fn program_names(&self) -> Vec<&'static str> {
        self.probes.program_names()
    }

    /// Has the kernel send stream-mode events while some trace asks for them.
    fn traces_changed(&mut self, traces: &BTreeMap<u64, SyscallTrace>) -> Result<(), SyscallError> {
        let stream = u32::from(traces.values().any(|t| t.stream));
        if stream != self.config.stream {
            self.config.stream = stream;
            self.config_map
                .set(0, self.config, 0)
                .map_err(map_err(names::CONFIG))?;
        }
        Ok(())
    }

    fn load(
        key: &FilterKey,
        (arch, description): (Arch, String),
        events: broadcast::Sender<SysEvent>,
        received: Arc<AtomicU64>,
    ) -> Result<Self, SyscallError> {
        let (config, cgroup_ids) = fixed_config(arch, key);
        let mut slots = [0u32; FENTRY_SLOTS];
        for (slot, nr) in slots.iter_mut().zip(&key.syscalls) {
            *slot = *nr;
        }
        // No kernel BTF for the object: none of its programs needs a CO-RE relocation (the
        // fentry path reads the kernel's BTF itself, only to find its functions).
        let mut ebpf = EbpfLoader::without_btf()
            .map_max_entries(names::EVENTS, crate::defaults::SYSCALL_RINGBUF_BYTES)
            .override_global(names::FIXED, &config, true)
            .override_global(names::SLOTS, &slots, true)
            .load(crate::ebpf::SYSCALLS_OBJECT)
            .map_err(|e| SyscallError::Load(format!("{e:#}")))?;
        // Loaded before any map is taken out (and maybe dropped), so every map fd is still
        // open when the kernel resolves the programs' map references.
        let probes = if key.syscalls.is_empty() {
            Probes::RawTracepoints {
                why_not_fentry: None,
            }
        } else {
            match load_fentry(&mut ebpf, arch, &key.syscalls) {
                Ok(functions) => Probes::Fentry { functions },
                Err(why) => {
                    log::info!("syscall trace on raw tracepoints: {why}");
                    Probes::RawTracepoints {
                        why_not_fentry: Some(why),
                    }
                }
            }
        };
        if let Probes::RawTracepoints { .. } = probes {
            for name in [names::EXIT, names::ENTER] {
                program(&mut ebpf, name)?
                    .load()
                    .map_err(|e| SyscallError::Load(format!("{name}: {e:#}")))?;
            }
        }
        if !cgroup_ids.is_empty() {
            let mut m: HashMap<MapData, u64, u8> = take(&mut ebpf, names::CGROUPS)?;
            for id in &cgroup_ids {
                m.insert(id, 1, 0).map_err(map_err(names::CGROUPS))?;
            }
        }
        if config.allow_list != 0 {
            let mut allow: Array<MapData, u64> = take(&mut ebpf, names::ALLOW)?;
            let mut words = [0u64; (MAX_SYSCALLS / 64) as usize];
            for nr in key.syscalls.iter().filter(|nr| **nr < MAX_SYSCALLS) {
                words[(nr / 64) as usize] |= 1 << (nr % 64);
            }
            for (i, w) in words.iter().enumerate() {
                allow.set(i as u32, w, 0).map_err(map_err(names::ALLOW))?;
            }
        }
        let mut config_map: Array<MapData, SysConfig> = take(&mut ebpf, names::CONFIG)?;
        config_map
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))?;
        let stats = take(&mut ebpf, names::STATS)?;
        let errnos = take(&mut ebpf, names::ERRNOS)?;
        let counters = take(&mut ebpf, names::COUNTERS)?;
        let reader = spawn_reader(&mut ebpf, names::EVENTS, events, received)?;
        // Exit first: an exit without its entry is ignored, an entry without its exit lingers.
        match &probes {
            Probes::RawTracepoints { .. } => {
                for (name, tp) in [(names::EXIT, "sys_exit"), (names::ENTER, "sys_enter")] {
                    program(&mut ebpf, name)?.attach(tp).map_err(|e| {
                        SyscallError::Load(format!("attaching {name} to {tp}: {e}"))
                    })?;
                }
            }
            Probes::Fentry { functions } => {
                for (i, function) in functions.iter().enumerate() {
                    typed::<FExit>(&mut ebpf, names::FEXIT[i])?
                        .attach()
                        .map_err(|e| {
                            SyscallError::Load(format!("attaching fexit {function}: {e}"))
                        })?;
                    typed::<FEntry>(&mut ebpf, names::FENTRY[i])?
                        .attach()
                        .map_err(|e| {
                            SyscallError::Load(format!("attaching fentry {function}: {e}"))
                        })?;
                }
            }
        }
        log::info!(
            "syscall probes ({}) loaded, tracing {description}",
            probes.kind()
        );
        Ok(SyscallProbes {
            _reader: reader,
            _ebpf: ebpf,
            probes,
            config_map,
            config,
            stats,
            errnos,
            counters,
            description,
        })
    }
}

/// The programs' fixed settings for `key`, and the cgroup ids that go into `SYS_CGROUPS` (only
/// when there are several: one cgroup, like one process, is a single compare in the kernel).
fn fixed_config(arch: Arch, key: &FilterKey) -> (SysConfig, Vec<u64>) {
    let mut config = SysConfig {
        nr_exit: arch.number("exit").unwrap_or(u32::MAX),
        nr_exit_group: arch.number("exit_group").unwrap_or(u32::MAX),
        allow_list: u32::from(!key.syscalls.is_empty()),
        ..SysConfig::default()
    };
    let mut ids = Vec::new();
    match &key.resolved {
        Resolved::Cgroup { id, .. } => {
            config.filter = filter::CGROUP_ONE;
            config.target = *id;
        }
        Resolved::Cgroups { groups } if groups.len() == 1 => {
            config.filter = filter::CGROUP_ONE;
            config.target = groups[0].1;
        }
        Resolved::Cgroups { groups } => {
            config.filter = filter::CGROUP;
            ids = groups.iter().map(|(_, id)| *id).collect();
        }
        Resolved::PidNs { ns, .. } => {
            config.pidns_dev = ns.dev;
            config.pidns_ino = ns.ino;
            config.filter = filter::PIDNS;
        }
        Resolved::Process { pid } => {
            config.filter = filter::TGID;
            config.target = u64::from(*pid);
        }
    }
    (config, ids)
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, SyscallError> {
    typed(ebpf, name)
}

fn typed<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, SyscallError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| SyscallError::Load(format!("the object has no program {name}")))?
        .try_into()
        .map_err(|e| SyscallError::Load(format!("{name}: {e}")))
}

/// Loads one fentry/fexit slot per syscall of the allow-list `syscalls` on its kernel function
/// (the slots' numbers are already in `SYS_SLOTS`), and returns the functions; or says why it
/// cannot, with every slot it loaded unloaded again.
fn load_fentry(ebpf: &mut Ebpf, arch: Arch, syscalls: &[u32]) -> Result<Vec<String>, String> {
    if syscalls.len() > FENTRY_SLOTS {
        return Err(format!(
            "fentry takes at most {FENTRY_SLOTS} syscalls, {} were listed",
            syscalls.len()
        ));
    }
    let btf = Btf::from_sys_fs().map_err(|e| format!("fentry needs the kernel's BTF: {e}"))?;
    let mut functions = Vec::new();
    for nr in syscalls {
        let name = arch
            .name(*nr)
            .ok_or_else(|| format!("syscall {nr} has no name on {}", arch.as_str()))?;
        let function = kernel_functions(arch, name)
            .into_iter()
            .find(|f| btf.id_by_type_name_kind(f, BtfKind::Func).is_ok())
            .ok_or_else(|| format!("no kernel function for {name} in the kernel's BTF"))?;
        functions.push(function);
    }
    let loaded = (|| {
        for (i, function) in functions.iter().enumerate() {
            let fexit = typed::<FExit>(ebpf, names::FEXIT[i]).map_err(|e| e.to_string())?;
            fexit
                .load(function, &btf)
                .map_err(|e| format!("the kernel refused fexit on {function}: {}", cause(&e)))?;
            let fentry = typed::<FEntry>(ebpf, names::FENTRY[i]).map_err(|e| e.to_string())?;
            fentry
                .load(function, &btf)
                .map_err(|e| format!("the kernel refused fentry on {function}: {}", cause(&e)))?;
        }
        Ok(())
    })();
    if let Err(why) = loaded {
        for i in 0..functions.len() {
            if let Ok(p) = typed::<FExit>(ebpf, names::FEXIT[i]) {
                let _ = p.unload();
            }
            if let Ok(p) = typed::<FEntry>(ebpf, names::FENTRY[i]) {
                let _ = p.unload();
            }
        }
        return Err(why);
    }
    Ok(functions)
}

/// The innermost cause of an error, on one line ("Operation not permitted (os error 1)").
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(inner) = e.source() {
        e = inner;
    }
    e.to_string()
}

fn read_totals(loaded: &SyscallProbes) -> Totals {
    let mut stats = BTreeMap::new();
    for (nr, per_cpu) in loaded.stats.iter().enumerate() {
        let Ok(per_cpu) = per_cpu else { continue };
        let s = sum_stats(per_cpu.iter());
        if s.calls > 0 {
            stats.insert(nr as u32, s);
        }
    }
    let mut errnos = BTreeMap::new();
    for (k, per_cpu) in loaded.errnos.iter().flatten() {
        let n: u64 = per_cpu.iter().sum();
        if n > 0 {
            errnos.insert((k.nr, k.errno), n);
        }
    }
    Totals {
        stats,
        errnos,
        counters: read_counters(&loaded.counters),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(calls: u64, errors: u64, total_ns: u64, bucket: usize) -> SysStats {
        let mut s = SysStats {
            calls,
            errors,
            total_ns,
            ..SysStats::default()
        };
        s.hist[bucket] = calls;
        s
    }

    #[test]
    fn the_kernel_and_the_client_agree_on_the_histogram() {
        assert_eq!(HIST_BUCKETS, orb8_syscalls::HIST_BUCKETS);
        assert_eq!(MAX_SYSCALLS, orb8_syscalls::MAX_SYSCALLS);
    }

    #[test]
    fn one_target_is_a_compare_several_cgroups_a_lookup() {
        let arch = Arch::current().expect("a supported architecture");
        let key = |resolved| FilterKey {
            resolved,
            syscalls: Vec::new(),
        };
        let (c, ids) = fixed_config(
            arch,
            &key(Resolved::Cgroup {
                path: "/x".into(),
                id: 77,
            }),
        );
        assert_eq!((c.filter, c.target, ids.len()), (filter::CGROUP_ONE, 77, 0));
        let (c, ids) = fixed_config(
            arch,
            &key(Resolved::Cgroups {
                groups: vec![("/a".into(), 5)],
            }),
        );
        assert_eq!((c.filter, c.target, ids.len()), (filter::CGROUP_ONE, 5, 0));
        let (c, ids) = fixed_config(
            arch,
            &key(Resolved::Cgroups {
                groups: vec![("/a".into(), 5), ("/b".into(), 6)],
            }),
        );
        assert_eq!((c.filter, ids), (filter::CGROUP, vec![5, 6]));
        let (c, _) = fixed_config(arch, &key(Resolved::Process { pid: 4242 }));
        assert_eq!((c.filter, c.target, c.allow_list), (filter::TGID, 4242, 0));
        let mut k = key(Resolved::Process { pid: 1 });
        k.syscalls = vec![0];
        assert_eq!(fixed_config(arch, &k).0.allow_list, 1);
    }

    #[test]
    fn fentry_looks_for_the_table_entry_then_the_function_behind_it() {
        assert_eq!(
            kernel_functions(Arch::X86_64, "openat"),
            ["__x64_sys_openat".to_string(), "__do_sys_openat".into()]
        );
        assert_eq!(
            kernel_functions(Arch::Aarch64, "getppid")[0],
            "__arm64_sys_getppid"
        );
        let fentry = Probes::Fentry {
            functions: vec!["__x64_sys_close".into(), "__do_sys_getppid".into()],
        };
        assert_eq!(
            fentry.program_names(),
            vec![
                "orb8_sys_fentry_0",
                "orb8_sys_fexit_0",
                "orb8_sys_fentry_1",
                "orb8_sys_fexit_1"
            ]
        );
        assert_eq!((fentry.kind(), fentry.note()), ("fentry", String::new()));
        let raw = Probes::RawTracepoints {
            why_not_fentry: Some("refused".into()),
        };
        assert_eq!(
            (raw.kind(), raw.note()),
            ("raw_tracepoint", "refused".into())
        );
    }

    #[test]
    fn per_cpu_copies_are_summed() {
        let s = sum_stats(&[stats(2, 1, 10, 3), stats(3, 0, 5, 3)]);
        assert_eq!((s.calls, s.errors, s.total_ns, s.hist[3]), (5, 1, 15, 5));
    }

    #[test]
    fn a_trace_sees_only_what_happened_since_it_started() {
        let base = Totals {
            stats: [(110, stats(4, 0, 40, 5)), (3, stats(1, 1, 1, 1))].into(),
            errnos: [((3, 9), 1)].into(),
            counters: [10, 0, 0, 0, 0],
        };
        let now = Totals {
            stats: [
                (110, stats(10, 0, 100, 5)),
                (3, stats(1, 1, 1, 1)),
                (257, stats(2, 2, 8, 2)),
            ]
            .into(),
            errnos: [((3, 9), 1), ((257, 2), 2)].into(),
            counters: [22, 1, 0, 0, 0],
        };
        let d = now.since(&base);
        assert_eq!(d.stats.len(), 2, "close() did not happen again: {d:?}");
        assert_eq!(d.stats[&110].calls, 6);
        assert_eq!(d.stats[&110].total_ns, 60);
        assert_eq!(d.stats[&110].hist[5], 6);
        assert_eq!(d.stats[&257].errors, 2);
        assert_eq!(d.errnos, [((257, 2), 2)].into());
        assert_eq!(d.counters, [12, 1, 0, 0, 0]);
    }
}
