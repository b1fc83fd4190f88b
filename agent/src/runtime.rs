//! The running agent: probes loaded and attached, the interface rescan, and the ring-buffer
//! reader. Commands (`watch`, `serve`) read from it; they never touch the kernel directly.
//!
//! Memory is bounded: the kernel flow table holds at most `flow_map_entries` flows (each
//! snapshot is a `Vec` of at most that many), the event fan-out holds at most `event_queue`
//! events (a consumer that falls further behind loses the oldest and the loss is counted), and
//! the ring buffer is `ringbuf_bytes` in the kernel. DNS messages come through their own ring
//! buffer into one [`dns::Tracker`] (bounded tables) and their exchanges through their own
//! fan-out.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use orb8_common::{Event, counter};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::broadcast,
    task::JoinHandle,
};

use crate::{
    dns,
    flows::{self, BootClock, Flow},
    interfaces::{self, Selected},
    probes::{ProbeConfig, Probes},
};

/// Interface names remembered for flows of interfaces that are gone.
const MAX_REMEMBERED_NAMES: usize = 4096;

/// Everything the agent is started with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Interfaces to attach to; empty means discover (veths, uplinks, container bridges).
    pub interfaces: Vec<String>,
    /// How often the interface list is re-read.
    pub rescan: Duration,
    /// Map sizes and attach mode.
    pub probe: ProbeConfig,
    /// Capacity of the event fan-out to consumers.
    pub event_queue: usize,
    /// A DNS query unanswered this long is reported as a timeout.
    pub dns_timeout: Duration,
}

/// Something consumers of the agent are told about as it happens.
#[derive(Clone, Debug)]
pub enum AgentEvent {
    /// A flow entered the kernel's flow table.
    NewFlow(Event),
    /// The probe was attached to an interface.
    Attached(Selected),
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
        iface: Selected,
        /// Why.
        reason: String,
    },
}

/// Counters kept in userspace, beside the kernel's.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Events read from the ring buffer.
    pub events_received: AtomicU64,
    /// Events a consumer missed because it fell more than `event_queue` behind.
    pub events_lost_slow_consumer: AtomicU64,
    /// DNS exchanges a consumer missed because it fell behind the DNS fan-out.
    pub dns_lost_slow_consumer: AtomicU64,
    /// DNS exchanges `TraceDns` clients were too slow to take.
    pub dns_slow_client: Arc<AtomicU64>,
}

/// What the agent makes of the DNS messages the probe hands over.
#[derive(Debug)]
struct DnsState {
    tracker: dns::Tracker,
    names: dns::Names,
    /// Messages read from the ring buffer.
    messages: u64,
    /// Exchanges completed (answered or timed out).
    exchanges: u64,
    /// Messages (or segments) not read, by reason.
    unparsed: std::collections::HashMap<dns::Unparsed, u64>,
}

/// A point-in-time view of the agent, for status reports and summaries.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Flows in the kernel table.
    pub flows: Vec<Flow>,
    /// Kernel counters, summed over CPUs, indexed by `orb8_common::counter`.
    pub counters: [u64; counter::COUNT as usize],
    /// Flows the kernel evicted from the full table.
    pub flows_evicted: u64,
}

/// The running agent.
pub struct Agent {
    probes: Mutex<Probes>,
    flows: Mutex<flows::FlowTables>,
    counters: Mutex<PerCpuArray<MapData, [u64; counter::COUNT as usize]>>,
    interfaces: Mutex<Vec<Selected>>,
    /// Names and roles of every interface attached so far, so flows of removed ones keep them.
    names: Mutex<std::collections::BTreeMap<u32, (String, interfaces::Role)>>,
    /// Who lives at the other end of each attached veth, by host interface index.
    peers: Mutex<std::collections::HashMap<u32, crate::peers::Peer>>,
    events: broadcast::Sender<AgentEvent>,
    dns: Mutex<DnsState>,
    dns_events: broadcast::Sender<dns::Exchange>,
    /// Userspace counters.
    pub stats: AgentStats,
    /// Converts kernel boot-time timestamps to wall-clock time.
    pub clock: BootClock,
    /// Converts the flow tables' (monotonic) timestamps to wall-clock time.
    pub flow_clock: BootClock,
    /// The syscall tracer, loaded only while a client traces syscalls.
    pub syscalls: Arc<crate::syscalls::SyscallTracer>,
    /// The packet drop tracer, loaded only while a client traces drops.
    pub drops: Arc<crate::drops::DropTracer>,
    /// The TCP lifecycle tracer, loaded only while a client traces TCP.
    pub tcp: Arc<crate::tcp::TcpTracer>,
    started: Instant,
    config: AgentConfig,
}

impl Agent {
    /// Loads the probes, attaches them, and starts the rescan and ring-buffer tasks. Fails when
    /// the probes cannot be loaded or an explicitly named interface does not exist.
    pub async fn start(config: AgentConfig) -> anyhow::Result<(Arc<Agent>, Vec<JoinHandle<()>>)> {
        let (probes, maps) = Probes::load(&config.probe)?;
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        let conn_task = tokio::spawn(conn);
        let links = interfaces::list_links(&handle)
            .await
            .context("listing network interfaces")?;
        let missing: Vec<&String> = config
            .interfaces
            .iter()
            .filter(|n| !links.iter().any(|l| &l.name == *n))
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            bail!("no such network interface: {}", names.join(", "));
        }
        let (events, _) = broadcast::channel(config.event_queue);
        let (dns_events, _) = broadcast::channel(crate::defaults::DNS_EVENT_QUEUE);
        let timeout_ns = config.dns_timeout.as_nanos().min(u64::MAX as u128) as u64;
        let agent = Arc::new(Agent {
            probes: Mutex::new(probes),
            flows: Mutex::new(maps.flows),
            counters: Mutex::new(maps.counters),
            interfaces: Mutex::new(Vec::new()),
            names: Mutex::default(),
            peers: Mutex::default(),
            events,
            dns: Mutex::new(DnsState {
                tracker: dns::Tracker::new(timeout_ns, crate::defaults::DNS_PENDING),
                names: dns::Names::new(crate::defaults::DNS_NAMES),
                messages: 0,
                exchanges: 0,
                unparsed: Default::default(),
            }),
            dns_events,
            stats: AgentStats::default(),
            clock: BootClock::now(),
            flow_clock: BootClock::monotonic(),
            syscalls: Arc::default(),
            drops: Arc::default(),
            tcp: Arc::default(),
            started: Instant::now(),
            config,
        });
        let report = agent.sync(&links);
        if let Some((iface, reason)) = report.failed.first()
            && !agent.config.interfaces.is_empty()
        {
            bail!("attaching to {}: {reason}", iface.name);
        }
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open while registered.
        let ring = unsafe { AsyncFd::register_with_interest(maps.events, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {e}"))?;
        // SAFETY: as above, for the DNS ring buffer.
        let dns_ring = unsafe { AsyncFd::register_with_interest(maps.dns, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the DNS ring buffer: {e}"))?;
        let tasks = vec![
            conn_task_wrapper(conn_task),
            tokio::spawn(read_ring(agent.clone(), ring)),
            tokio::spawn(read_dns_ring(agent.clone(), dns_ring)),
            tokio::spawn(expire_dns(agent.clone())),
            tokio::spawn(rescan(agent.clone(), handle)),
        ];
        Ok((agent, tasks))
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Records that a consumer missed `n` events.
    pub fn count_lost(&self, n: u64) {
        self.stats
            .events_lost_slow_consumer
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Subscribes to DNS exchanges from now on.
    pub fn subscribe_dns(&self) -> broadcast::Receiver<dns::Exchange> {
        self.dns_events.subscribe()
    }

    /// Records that a consumer missed `n` DNS exchanges.
    pub fn count_dns_lost(&self, n: u64) {
        self.stats
            .dns_lost_slow_consumer
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The DNS name `addr` was last an answer for, as seen on this node.
    pub fn dns_name(&self, addr: &std::net::IpAddr) -> Option<String> {
        self.dns
            .lock()
            .expect("dns lock")
            .names
            .name_of(addr)
            .map(str::to_string)
    }

    /// The agent's DNS counters by name (the kernel's are in [`Agent::counters`]).
    pub fn dns_counters(&self) -> Vec<(&'static str, u64)> {
        let d = self.dns.lock().expect("dns lock");
        let s = d.tracker.stats;
        let mut out = vec![
            ("dns_messages_read", d.messages),
            ("dns_exchanges", d.exchanges),
            ("dns_timeouts", s.timeouts),
            ("dns_duplicates", s.duplicates),
            ("dns_unmatched", s.unmatched),
            ("dns_late_responses", s.late),
            ("dns_pending_full", s.pending_full),
            (
                "dns_queue_overflow",
                self.stats.dns_lost_slow_consumer.load(Ordering::Relaxed),
            ),
        ];
        for why in dns::Unparsed::ALL {
            out.push((why.name(), d.unparsed.get(&why).copied().unwrap_or(0)));
        }
        out
    }

    /// Takes the DNS messages of one ring-buffer event; fans out the exchanges they complete.
    pub fn take_dns(&self, ev: &orb8_common::dns::DnsEvent) {
        let (sightings, unparsed) = crate::convert::dns_sightings(ev);
        let done: Vec<dns::Exchange> = {
            let mut d = self.dns.lock().expect("dns lock");
            d.messages += 1;
            if let Some(why) = unparsed {
                *d.unparsed.entry(why).or_default() += 1;
            }
            let done: Vec<dns::Exchange> = sightings
                .into_iter()
                .filter_map(|s| d.tracker.observe(s))
                .collect();
            for e in &done {
                d.names.learn(e);
            }
            d.exchanges += done.len() as u64;
            done
        };
        for e in done {
            // No subscriber is not a loss: nobody asked for DNS.
            let _ = self.dns_events.send(e);
        }
    }

    /// Reports the DNS queries unanswered since the timeout.
    pub fn expire_dns(&self) {
        let done = {
            let mut d = self.dns.lock().expect("dns lock");
            let done = d.tracker.expire(BootClock::boot_now_ns());
            d.exchanges += done.len() as u64;
            done
        };
        for e in done {
            let _ = self.dns_events.send(e);
        }
    }

    /// Interfaces the probe is attached to now.
    pub fn interfaces(&self) -> Vec<Selected> {
        self.interfaces.lock().expect("interfaces lock").clone()
    }

    /// Attach mode and the names of the loaded programs (the tracers' while they run).
    pub fn probe_info(&self) -> (&'static str, Vec<&'static str>) {
        let p = self.probes.lock().expect("probes lock");
        let mut programs = p.program_names();
        programs.extend(self.syscalls.program_names());
        programs.extend(self.drops.program_names());
        programs.extend(self.tcp.program_names());
        (p.mode().as_str(), programs)
    }

    /// Time since the agent started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The name of an interface by index, when the probe is or was attached to it.
    pub fn interface_name(&self, index: u32) -> String {
        self.names
            .lock()
            .expect("names lock")
            .get(&index)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| format!("if{index}"))
    }

    /// Why the probe is or was attached to an interface, by index; `None` for one it never was.
    pub fn interface_role(&self, index: u32) -> Option<interfaces::Role> {
        self.names
            .lock()
            .expect("names lock")
            .get(&index)
            .map(|(_, role)| *role)
    }

    /// The process and container at the other end of a veth, once found.
    pub fn peer(&self, index: u32) -> Option<crate::peers::Peer> {
        self.peers.lock().expect("peers lock").get(&index).cloned()
    }

    /// Looks for the peers of attached veths not known yet (scanning `/proc`, so at most as
    /// often as the caller asks), and forgets those of detached ones.
    pub fn refresh_peers(&self) {
        let veths: Vec<(u32, i32)> = self
            .interfaces()
            .iter()
            .filter(|i| i.role == interfaces::Role::Veth)
            .filter_map(|i| Some((i.index, i.peer_netnsid?)))
            .collect();
        let missing: Vec<(u32, i32)> = {
            let mut peers = self.peers.lock().expect("peers lock");
            peers.retain(|i, _| veths.iter().any(|(v, _)| v == i));
            veths
                .iter()
                .copied()
                .filter(|(i, _)| !peers.contains_key(i))
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let found = crate::peers::find(&missing);
        self.peers.lock().expect("peers lock").extend(found);
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        crate::probes::read_counters(&self.counters.lock().expect("counters lock"))
    }

    /// How many flows the kernel table holds, and the counters read after it (as in
    /// [`Agent::snapshot`]), with the evictions. Walks the table's keys only: no per-CPU value
    /// is copied out, which is what makes `GetStatus` cheap on a full table.
    pub fn flow_count(&self) -> (u64, [u64; counter::COUNT as usize], u64) {
        let flows = self.flows.lock().expect("flows lock").count();
        let counters = self.counters();
        let evicted = counters[counter::FLOWS_CREATED as usize].saturating_sub(flows);
        (flows, counters, evicted)
    }

    /// Reads the flow table and the counters. Counters are read after the table, so a flow
    /// created during the read is never mistaken for an eviction.
    pub fn snapshot(&self) -> Snapshot {
        let flows = self.flows.lock().expect("flows lock").read();
        let counters = self.counters();
        let flows_evicted =
            counters[counter::FLOWS_CREATED as usize].saturating_sub(flows.len() as u64);
        Snapshot {
            flows,
            counters,
            flows_evicted,
        }
    }

    /// Detaches every probe. Called on shutdown; dropping the agent does the same.
    pub fn shutdown(&self) {
        self.syscalls.shutdown();
        self.drops.shutdown();
        self.tcp.shutdown();
        self.probes.lock().expect("probes lock").close();
        self.interfaces.lock().expect("interfaces lock").clear();
    }

    fn sync(&self, links: &[interfaces::Link]) -> crate::probes::SyncReport {
        let uplinks = interfaces::read_default_route_interfaces();
        let wanted = interfaces::select(links, &uplinks, &self.config.interfaces);
        let report = self.probes.lock().expect("probes lock").sync(&wanted);
        {
            let mut current = self.interfaces.lock().expect("interfaces lock");
            current.retain(|i| !report.detached.iter().any(|(idx, _)| *idx == i.index));
            current.extend(report.attached.iter().cloned());
            current.sort();
            let mut names = self.names.lock().expect("names lock");
            for i in &report.attached {
                names.insert(i.index, (i.name.clone(), i.role));
            }
            // Interface indexes only grow, so the oldest names go first.
            while names.len() > MAX_REMEMBERED_NAMES {
                names.pop_first();
            }
        }
        for iface in &report.attached {
            log::info!("attached to {} ({})", iface.name, iface.role.as_str());
            let _ = self.events.send(AgentEvent::Attached(iface.clone()));
        }
        for (index, name) in &report.detached {
            log::info!("detached from {name} (gone)");
            let _ = self.events.send(AgentEvent::Detached {
                index: *index,
                name: name.clone(),
            });
        }
        for (iface, reason) in &report.failed {
            log::warn!("cannot attach to {}: {reason}", iface.name);
            let _ = self.events.send(AgentEvent::AttachFailed {
                iface: iface.clone(),
                reason: reason.clone(),
            });
        }
        report
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn conn_task_wrapper(task: JoinHandle<()>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = task.await;
    })
}

/// Reads the ring buffer whenever the kernel says it is readable: no polling interval, no cap.
async fn read_ring(agent: Arc<Agent>, mut ring: AsyncFd<RingBuf<MapData>>) {
    log::debug!("reading ring buffer fd {}", ring.get_ref().as_raw_fd());
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("ring buffer poll failed: {e}");
                return;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `Event` (checked length); read unaligned.
            let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            agent.stats.events_received.fetch_add(1, Ordering::Relaxed);
            // No subscriber is not a loss: nobody asked for events.
            let _ = agent.events.send(AgentEvent::NewFlow(ev));
        }
        guard.clear_ready();
    }
}

/// Reads the DNS ring buffer whenever the kernel says it is readable.
async fn read_dns_ring(agent: Arc<Agent>, mut ring: AsyncFd<RingBuf<MapData>>) {
    use orb8_common::dns::DnsEvent;
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("DNS ring buffer poll failed: {e}");
                return;
            }
        };
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            if item.len() < size_of::<DnsEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `DnsEvent` (checked length); read unaligned.
            let ev: DnsEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            agent.take_dns(&ev);
        }
        guard.clear_ready();
    }
}

/// Reports unanswered DNS queries as timeouts, checking ten times per timeout.
async fn expire_dns(agent: Arc<Agent>) {
    let every = (agent.config.dns_timeout / 10).max(crate::defaults::DNS_EXPIRE_MIN);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        agent.expire_dns();
    }
}

/// Re-reads the interface list so new pods are attached and removed ones forgotten.
async fn rescan(agent: Arc<Agent>, handle: rtnetlink::Handle) {
    let mut tick = tokio::time::interval(agent.config.rescan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_peer_scan: Option<Instant> = None;
    loop {
        tick.tick().await;
        match interfaces::list_links(&handle).await {
            Ok(links) => {
                agent.sync(&links);
            }
            Err(e) => log::warn!("listing network interfaces: {e}"),
        }
        // Peers are looked for at most every PEER_SCAN (it reads /proc).
        if last_peer_scan.is_none_or(|t| t.elapsed() >= crate::defaults::PEER_SCAN) {
            last_peer_scan = Some(Instant::now());
            let a = agent.clone();
            let _ = tokio::task::spawn_blocking(move || a.refresh_peers()).await;
        }
    }
}
