//! Loading orb8's eBPF object and attaching its TC programs to interfaces.
//!
//! Kernels >= 6.6 get TCX links: they belong to this process, so the kernel removes them when the
//! agent exits, even on SIGKILL. Older kernels get clsact filters over netlink, which outlive the
//! process; the agent removes its own on shutdown and, before attaching to an interface, those a
//! killed agent left there, never those of another live agent (see [`crate::clsact`]).

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType,
        links::{Link as _, LinkOrder},
        tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
/// The DNS ports of [`ProbeConfig::dns_ports`].
pub use orb8_common::dns::DnsPorts;
use orb8_common::{counter, names};

use crate::{clsact, interfaces::Selected};

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), removed by the kernel when the agent exits.
    Tcx,
    /// Netlink clsact filters (older kernels), removed by the agent.
    Tc,
}

impl AttachMode {
    /// `tcx` or `tc`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Tc => "tc",
        }
    }

    /// TCX when the running kernel has it, otherwise clsact filters.
    pub fn detect() -> Self {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
            _ => AttachMode::Tc,
        }
    }
}

/// Sizes of the kernel maps, fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// IPv4 flow table capacity; the least recently updated flow is evicted beyond it.
    pub flow_map_entries: u32,
    /// Capacity of the table of every other flow (IPv6).
    pub flow_map_entries_v6: u32,
    /// Ring buffer size in bytes (a power-of-two multiple of the page size).
    pub ringbuf_bytes: u32,
    /// How to attach.
    pub mode: AttachMode,
    /// The ports whose TCP/UDP payloads are handed over as DNS messages (fixed at load).
    pub dns_ports: DnsPorts,
}

/// Failures the agent reports while loading or attaching, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The eBPF object could not be loaded (permissions, verifier, unsupported kernel).
    #[error("loading the eBPF object: {source}{hint}")]
    Load {
        /// aya's error, with the verifier log when the verifier refused a program.
        #[source]
        source: aya::EbpfError,
        /// What the user can do about it.
        hint: &'static str,
    },
    /// A program in the object failed to load into the kernel.
    #[error("loading program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error, with the verifier log.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The object does not contain what this agent expects (a build mismatch).
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A map could not be opened.
    #[error("opening map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// Attaching to an interface failed.
    #[error("attaching TC {hook} to {interface}: {source}")]
    Attach {
        /// Interface name.
        interface: String,
        /// `ingress` or `egress`.
        hook: &'static str,
        /// aya's error.
        #[source]
        source: aya::programs::ProgramError,
    },
}

struct Attached {
    name: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// The loaded eBPF object and the interfaces its TC programs are attached to.
pub struct Probes {
    ebpf: Ebpf,
    mode: AttachMode,
    attached: BTreeMap<u32, Attached>,
    /// Detached for good ([`Probes::close`]): nothing is attached any more, so that a rescan
    /// still running when the agent shuts down cannot attach again behind its back.
    closed: bool,
}

/// The maps the agent reads, taken out of the object so they can live in their own tasks.
pub struct Maps {
    /// Per-CPU LRU flow tables (IPv4, and the rest).
    pub flows: crate::flows::FlowTables,
    /// New-flow events.
    pub events: RingBuf<MapData>,
    /// Per-CPU counters: one entry, an array indexed by `orb8_common::counter`.
    pub counters: PerCpuArray<MapData, [u64; counter::COUNT as usize]>,
    /// DNS messages (`orb8_common::dns::DnsEvent`).
    pub dns: RingBuf<MapData>,
}

const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (names::TC_INGRESS, TcAttachType::Ingress, "ingress"),
    (names::TC_EGRESS, TcAttachType::Egress, "egress"),
];

/// Loads the two TC programs, each on its own thread: the kernel verifies a program in the
/// loading thread, ~50 ms each on a 2-vCPU host, and the two verifications are independent.
fn load_in_parallel(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let mut progs: Vec<(&'static str, &mut SchedClassifier)> = Vec::with_capacity(2);
    for (name, prog) in ebpf.programs_mut() {
        let Some(&(name, _, _)) = PROGRAMS.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        let prog = prog.try_into().map_err(|source| ProbeError::Program {
            program: name,
            source,
        })?;
        progs.push((name, prog));
    }
    for (name, _, _) in PROGRAMS {
        if !progs.iter().any(|(n, _)| *n == name) {
            return Err(ProbeError::Missing(name));
        }
    }
    std::thread::scope(|s| {
        let loads: Vec<_> = progs
            .into_iter()
            .map(|(name, prog)| {
                s.spawn(move || {
                    prog.load().map_err(|source| ProbeError::Program {
                        program: name,
                        source,
                    })
                })
            })
            .collect();
        loads
            .into_iter()
            .try_for_each(|l| l.join().expect("a program load does not panic"))
    })
}

/// Loads `orb8_count_flows` (never attached; the flow tables run it to count themselves), or
/// `None` where the kernel refuses it: counting then falls back to reading the tables.
fn load_counter(ebpf: &mut Ebpf) -> Option<aya::programs::ProgramFd> {
    let loaded = (|| -> Result<aya::programs::ProgramFd, Box<dyn std::error::Error>> {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(names::COUNT_FLOWS)
            .ok_or("not in the object")?
            .try_into()?;
        prog.load()?;
        Ok(prog.fd()?.try_clone()?)
    })();
    loaded
        .inspect_err(|e| {
            log::info!(
                "{} not loaded ({e}): flows are counted by reading the tables",
                names::COUNT_FLOWS
            )
        })
        .ok()
}

impl Probes {
    /// Loads the object embedded in the agent into the kernel (nothing attached yet) and takes
    /// out its maps.
    pub fn load(config: &ProbeConfig) -> Result<(Self, Maps), ProbeError> {
        // No kernel BTF: the TC programs need no CO-RE relocation, so they load the same on a
        // kernel without /sys/kernel/btf/vmlinux.
        let mut ebpf = EbpfLoader::without_btf()
            .map_max_entries(names::FLOWS4, config.flow_map_entries)
            .map_max_entries(names::FLOWS, config.flow_map_entries_v6)
            .map_max_entries(names::EVENTS, config.ringbuf_bytes)
            .map_max_entries(names::DNS_EVENTS, crate::defaults::DNS_RINGBUF_BYTES)
            .override_global(names::DNS_PORTS, &config.dns_ports, true)
            .load(crate::ebpf::OBJECT)
            .map_err(|source| ProbeError::Load {
                hint: load_hint(&source),
                source,
            })?;
        load_in_parallel(&mut ebpf)?;
        let flows = crate::flows::FlowTables {
            v4: take_map(&mut ebpf, names::FLOWS4)?,
            other: take_map(&mut ebpf, names::FLOWS)?,
            counter: load_counter(&mut ebpf),
        };
        let events = take_map(&mut ebpf, names::EVENTS)?;
        let counters = take_map(&mut ebpf, names::COUNTERS)?;
        let dns = take_map(&mut ebpf, names::DNS_EVENTS)?;
        Ok((
            Probes {
                ebpf,
                mode: config.mode,
                attached: BTreeMap::new(),
                closed: false,
            },
            Maps {
                flows,
                events,
                counters,
                dns,
            },
        ))
    }

    /// How programs are attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Names of the loaded programs.
    pub fn program_names(&self) -> Vec<&'static str> {
        PROGRAMS.iter().map(|(n, _, _)| *n).collect()
    }

    /// Interfaces (index, name) currently attached.
    pub fn attached(&self) -> Vec<(u32, String)> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.clone()))
            .collect()
    }

    /// Attaches both programs to `iface`. Attaching is all or nothing: when egress fails,
    /// ingress is detached again.
    pub fn attach(&mut self, iface: &Selected) -> Result<(), ProbeError> {
        if self.mode == AttachMode::Tc {
            // clsact may exist already (another tool, or an earlier orb8): that is fine.
            let _ = tc::qdisc_add_clsact(&iface.name);
            remove_stale_filters(iface);
        }
        let mut ids = Vec::with_capacity(2);
        for (name, attach_type, hook) in PROGRAMS {
            let options = match self.mode {
                AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                // The handle names this agent as the filter's owner.
                AttachMode::Tc => TcAttachOptions::Netlink(NlOptions {
                    handle: clsact::own_handle().into(),
                    ..NlOptions::default()
                }),
            };
            let prog = self.program(name)?;
            match prog.attach_with_options(&iface.name, attach_type, options) {
                Ok(id) => ids.push(id),
                Err(source) => {
                    if let Some(id) = ids.pop() {
                        let _ = self.program(names::TC_INGRESS)?.detach(id);
                    }
                    return Err(ProbeError::Attach {
                        interface: iface.name.clone(),
                        hook,
                        source,
                    });
                }
            }
        }
        let egress = ids.pop().expect("two programs attached");
        let ingress = ids.pop().expect("two programs attached");
        self.attached.insert(
            iface.index,
            Attached {
                name: iface.name.clone(),
                ingress,
                egress,
            },
        );
        Ok(())
    }

    /// Detaches from the interface with this index. An interface that is already gone has
    /// nothing left to detach, which is not an error.
    pub fn detach(&mut self, index: u32) {
        let Some(a) = self.attached.remove(&index) else {
            return;
        };
        if let Ok(p) = self.program(names::TC_INGRESS) {
            let _ = p.detach(a.ingress);
        }
        if let Ok(p) = self.program(names::TC_EGRESS) {
            let _ = p.detach(a.egress);
        }
    }

    /// Makes the attached set equal `wanted`: attaches new interfaces, detaches vanished ones
    /// (and ones whose index now belongs to another name). Returns what changed.
    pub fn sync(&mut self, wanted: &[Selected]) -> SyncReport {
        let mut report = SyncReport::default();
        if self.closed {
            return report;
        }
        let gone: Vec<u32> = self
            .attached
            .iter()
            .filter(|(i, a)| !wanted.iter().any(|w| w.index == **i && w.name == a.name))
            .map(|(i, _)| *i)
            .collect();
        for index in gone {
            let name = self
                .attached
                .get(&index)
                .map(|a| a.name.clone())
                .unwrap_or_default();
            self.detach(index);
            report.detached.push((index, name));
        }
        for w in wanted {
            if self.attached.contains_key(&w.index) {
                continue;
            }
            match self.attach(w) {
                Ok(()) => report.attached.push(w.clone()),
                Err(e) => report.failed.push((w.clone(), e.to_string())),
            }
        }
        report
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for index in all {
            self.detach(index);
        }
    }

    /// Detaches everything for good: later [`Probes::sync`] calls attach nothing. The agent's
    /// shutdown: its interface rescan may be mid-scan on another thread when it is told to stop,
    /// and would otherwise attach again (a clsact filter made then would outlive the agent).
    pub fn close(&mut self) {
        self.closed = true;
        self.detach_all();
    }

    /// Runs a loaded program (or [`names::BENCH_NOOP`], loaded on first use) on a frame with
    /// `BPF_PROG_TEST_RUN`, `repeat` times, without attaching it anywhere. Effects on the maps
    /// are real: this is how tests feed the parser frames no interface would carry, and how the
    /// benchmark measures the probe's cost per packet.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult, ProbeError> {
        use aya::programs::TestRun as _;
        let prog = self.program(program)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| ProbeError::Program { program, source })?;
        }
        prog.test_run(aya::programs::TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx,
            repeat,
            ..Default::default()
        })
        .map_err(|source| ProbeError::Program { program, source })
    }

    fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, ProbeError> {
        self.ebpf
            .program_mut(name)
            .ok_or(ProbeError::Missing(name))?
            .try_into()
            .map_err(|source| ProbeError::Program {
                program: name,
                source,
            })
    }
}

/// Kernel counters summed over CPUs, indexed by `orb8_common::counter`.
pub fn read_counters(
    map: &PerCpuArray<MapData, [u64; counter::COUNT as usize]>,
) -> [u64; counter::COUNT as usize] {
    let mut out = [0u64; counter::COUNT as usize];
    if let Ok(per_cpu) = map.get(&0, 0) {
        for cpu in per_cpu.iter() {
            for (o, v) in out.iter_mut().zip(cpu) {
                *o += v;
            }
        }
    }
    out
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// What one [`Probes::sync`] changed.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Newly attached interfaces.
    pub attached: Vec<Selected>,
    /// Detached interfaces (index, name).
    pub detached: Vec<(u32, String)>,
    /// Interfaces that could not be attached, with the reason.
    pub failed: Vec<(Selected, String)>,
}

/// Removes the clsact filters of orb8 agents that are gone (killed before they could remove
/// them) from `iface`; live agents' filters stay.
fn remove_stale_filters(iface: &Selected) {
    let ours: Vec<&str> = PROGRAMS.iter().map(|(n, _, _)| *n).collect();
    for (hook, attach_type) in [
        (clsact::Hook::Ingress, TcAttachType::Ingress),
        (clsact::Hook::Egress, TcAttachType::Egress),
    ] {
        let filters = match clsact::list(iface.index, hook) {
            Ok(f) => f,
            Err(e) => {
                log::debug!("listing {hook:?} filters of {}: {e}", iface.name);
                continue;
            }
        };
        let proc = std::path::Path::new("/proc");
        for f in clsact::stale(&filters, &ours, |f| clsact::owner(f, proc)) {
            let removed = SchedClassifierLink::attached(
                &iface.name,
                attach_type,
                f.priority,
                f.handle.into(),
                None,
            )
            .map_err(aya::programs::ProgramError::from)
            .and_then(|link| link.detach());
            match removed {
                Ok(()) => log::info!(
                    "removed the {} filter of a gone agent (pid {}) from {}",
                    f.name,
                    f.handle,
                    iface.name
                ),
                Err(e) => log::warn!(
                    "removing the {} filter of a gone agent (pid {}) from {}: {e}",
                    f.name,
                    f.handle,
                    iface.name
                ),
            }
        }
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, ProbeError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Missing(name))?;
    M::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

fn load_hint(e: &aya::EbpfError) -> &'static str {
    let text = format!("{e:?}");
    if text.contains("PermissionDenied") || text.contains("Operation not permitted") {
        " (orb8-agent needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
    } else {
        ""
    }
}
