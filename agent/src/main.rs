//! `orb8-agent`: the node agent. `watch` prints what the probes see; see `--help`.

use std::{io::Write as _, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use orb8_agent::{
    defaults,
    gpu::{GpuConfig, Gpus},
    metrics::{self, Metrics},
    probes::{AttachMode, ProbeConfig},
    report::Line,
    runtime::{Agent, AgentConfig},
    service::{self, Listen, Listener, Service, Stopped},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::broadcast::error::RecvError,
};

/// orb8's node agent: eBPF network flow probes on this host.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach the probes and print new flows as they appear; on exit (Ctrl-C, SIGTERM or
    /// --duration) print the flow table and counters.
    Watch(WatchArgs),
    /// Attach the probes and serve orb8.agent.v1 over gRPC on loopback or a unix socket.
    /// Needs the session token in ORB8_AGENT_TOKEN. Prints one JSON line when ready:
    /// {"listening":ADDR,"node":NODE,"attach_mode":MODE,"metrics":ADDR or null}.
    Serve(ServeArgs),
}

#[derive(Parser, Debug)]
struct ServeArgs {
    #[command(flatten)]
    probe: ProbeArgs,
    /// Where to listen: a loopback HOST:PORT (port 0 picks one) or unix:PATH.
    #[arg(long, default_value = defaults::LISTEN, value_name = "ADDR")]
    listen: Listen,
    /// Exit when no client has been connected for this long; 0 never exits (always-on).
    #[arg(long, default_value = defaults::IDLE_TIMEOUT, value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Node name reported to clients (default: $NODE_NAME, else the host name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Also serve Prometheus metrics (GET /metrics) and GET /healthz over HTTP on this
    /// IP:PORT (the pod IP in the DaemonSet); off unless given.
    #[arg(long, value_name = "IP:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Whether --metrics-listen is honoured (the DaemonSet's ConfigMap switch).
    #[arg(long, env = "ORB8_METRICS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    metrics: bool,
    /// At most this many pods get their own orb8_pod_bytes_total series; the others are
    /// summed in pod="_other".
    #[arg(long, default_value_t = defaults::METRICS_POD_CAP, value_name = "PODS")]
    metrics_pod_cap: usize,
    /// Where the container runtime keeps its containers' OCI config.json, for pod names
    /// (repeatable; default: containerd's and CRI-O's run directories).
    #[arg(long = "pod-metadata-dir", value_name = "DIR")]
    pod_metadata_dirs: Vec<std::path::PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Parser, Debug)]
struct GpuArgs {
    /// Read GPU numbers from this DCGM exporter metrics URL when NVML is absent (default: use
    /// http://127.0.0.1:9400/metrics if it answers).
    #[arg(long, value_name = "URL")]
    dcgm_exporter: Option<String>,
    /// Play GPU readings from this JSON file instead of asking the hardware (tests, replays).
    #[arg(long, value_name = "FILE")]
    gpu_samples: Option<std::path::PathBuf>,
    /// The kubelet's pod-resources socket (GPU allocations).
    #[arg(long, value_name = "PATH", default_value = orb8_proto::POD_RESOURCES_SOCKET)]
    pod_resources_socket: std::path::PathBuf,
}

#[derive(Parser, Debug)]
struct ProbeArgs {
    /// Interface to attach to (repeatable; ORB8_INTERFACES: comma-separated). Default: veth
    /// host ends, default-route uplinks and container bridges (cni0, docker0, cbr0, br-*),
    /// re-scanned as they come and go.
    #[arg(
        short,
        long = "interface",
        value_name = "NAME",
        env = "ORB8_INTERFACES",
        value_delimiter = ','
    )]
    interfaces: Vec<String>,
    /// How to attach TC programs: tcx (kernel >= 6.6), tc (clsact filters) or auto.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    attach: Mode,
    /// IPv4 flow table capacity; least recently updated flows are evicted (and counted) beyond it.
    #[arg(long, default_value_t = defaults::FLOW_MAP_ENTRIES, value_name = "ENTRIES", env = "ORB8_FLOW_MAP_SIZE")]
    flow_map_size: u32,
    /// Capacity of the table of every other flow (IPv6) [default: an eighth of --flow-map-size,
    /// at least 1024].
    #[arg(long, value_name = "ENTRIES", env = "ORB8_FLOW_MAP_SIZE_V6")]
    flow_map_size_v6: Option<u32>,
    /// Ring buffer size in bytes for new-flow events (power of two, at least one page).
    #[arg(long, default_value_t = defaults::RINGBUF_BYTES, value_name = "BYTES")]
    ringbuf_size: u32,
    /// Interface rescan period in milliseconds.
    #[arg(long, default_value_t = defaults::RESCAN_MS, value_name = "MS")]
    rescan_ms: u64,
    /// A port carrying DNS besides 53 (repeatable, at most 7): its TCP/UDP payloads are parsed
    /// as DNS messages.
    #[arg(long = "dns-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    dns_ports: Vec<u16>,
    /// A DNS query without a response this long is reported as a timeout.
    #[arg(long, default_value = defaults::DNS_TIMEOUT, value_parser = humantime::parse_duration)]
    dns_timeout: Duration,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Auto,
    Tcx,
    Tc,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

#[derive(Parser, Debug)]
struct WatchArgs {
    #[command(flatten)]
    probe: ProbeArgs,
    /// Output format: text, or json (one object per line).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Stop after this long (e.g. 10s, 2m); default: until Ctrl-C or SIGTERM.
    #[arg(short, long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

impl ProbeArgs {
    fn config(&self) -> anyhow::Result<AgentConfig> {
        if !self.ringbuf_size.is_power_of_two() || self.ringbuf_size < defaults::MIN_RINGBUF_BYTES {
            anyhow::bail!(
                "--ringbuf-size must be a power of two of at least {}, got {}",
                defaults::MIN_RINGBUF_BYTES,
                self.ringbuf_size
            );
        }
        if self.flow_map_size == 0 {
            anyhow::bail!("--flow-map-size must be at least 1");
        }
        if self.flow_map_size_v6 == Some(0) {
            anyhow::bail!("--flow-map-size-v6 must be at least 1");
        }
        let mut dns_ports = orb8_common::dns::DnsPorts::DEFAULT;
        let mut extra: Vec<u16> = self
            .dns_ports
            .iter()
            .copied()
            .filter(|p| *p != 53)
            .collect();
        extra.sort_unstable();
        extra.dedup();
        if extra.len() > defaults::DNS_EXTRA_PORTS {
            anyhow::bail!(
                "--dns-port: at most {} ports besides 53, got {}",
                defaults::DNS_EXTRA_PORTS,
                extra.len()
            );
        }
        dns_ports.ports[1..=extra.len()].copy_from_slice(&extra);
        if self.dns_timeout.is_zero() {
            anyhow::bail!("--dns-timeout must be more than 0");
        }
        Ok(AgentConfig {
            interfaces: self
                .interfaces
                .iter()
                .filter(|i| !i.trim().is_empty())
                .map(|i| i.trim().to_string())
                .collect(),
            rescan: Duration::from_millis(self.rescan_ms).max(defaults::MIN_RESCAN),
            probe: ProbeConfig {
                flow_map_entries: self.flow_map_size,
                flow_map_entries_v6: self.flow_map_size_v6.unwrap_or_else(|| {
                    (self.flow_map_size / defaults::FLOW_MAP_V6_DIVISOR)
                        .max(defaults::MIN_FLOW_MAP_V6)
                        .min(self.flow_map_size)
                }),
                ringbuf_bytes: self.ringbuf_size,
                mode: match self.attach {
                    Mode::Auto => AttachMode::detect(),
                    Mode::Tcx => AttachMode::Tcx,
                    Mode::Tc => AttachMode::Tc,
                },
                dns_ports,
            },
            event_queue: defaults::EVENT_QUEUE,
            dns_timeout: self.dns_timeout,
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orb8-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Watch(args) => watch(args).await,
            Command::Serve(args) => serve(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orb8-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let config = args.probe.config()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let (agent, tasks) = Agent::start(config).await?;
    let mut events = agent.subscribe();
    let (mode, _) = agent.probe_info();
    let print = |line: &Line| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match args.output {
            Format::Json => {
                serde_json::to_writer(&mut out, line)?;
                writeln!(out)?;
            }
            Format::Text => writeln!(out, "{}", line.text())?,
        }
        out.flush()
    };
    let ready = Line::Ready {
        attach_mode: mode,
        interfaces: agent.interfaces().iter().map(Into::into).collect(),
    };
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let result: anyhow::Result<()> = async {
        print(&ready)?;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => print(&Line::from_event(&agent, &ev))?,
                    Err(RecvError::Lagged(n)) => {
                        agent.count_lost(n);
                        print(&Line::Lost { count: n })?;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = &mut deadline => break,
            }
        }
        // Events already in the queue when we stopped are still printed.
        while let Ok(ev) = events.try_recv() {
            print(&Line::from_event(&agent, &ev))?;
        }
        print(&Line::summary(&agent, &agent.snapshot()))?;
        Ok(())
    }
    .await;
    for t in tasks {
        t.abort();
    }
    agent.shutdown();
    result
}

/// Environment variable carrying the per-session token.
const TOKEN_ENV: &str = "ORB8_AGENT_TOKEN";

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    if token.len() < 16 {
        anyhow::bail!("set {TOKEN_ENV} to the session token (at least 16 characters)");
    }
    let config = args.probe.config()?;
    let gpus = Arc::new(Gpus::detect(&GpuConfig {
        recorded: args.gpu.gpu_samples.clone(),
        dcgm_exporter: args.gpu.dcgm_exporter.clone(),
        pod_resources_socket: args.gpu.pod_resources_socket.clone(),
    })?);
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let listener = Listener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {:?}", args.listen))?;
    let metrics_listener = match args.metrics_listen.filter(|_| args.metrics) {
        Some(a) => Some(
            metrics::http::bind(a)
                .await
                .with_context(|| format!("listening for metrics on {a}"))?,
        ),
        None => None,
    };
    let (agent, mut tasks) = Agent::start(config).await?;
    let node = args
        .node
        .filter(|n| !n.is_empty())
        .unwrap_or_else(host_name);
    let (mode, _) = agent.probe_info();
    let service = Service::with_gpus(agent.clone(), node.clone(), gpus.clone());
    let metrics_address = match metrics_listener {
        Some(l) => {
            let address = l.local_addr()?.to_string();
            let dirs = if args.pod_metadata_dirs.is_empty() {
                metrics::podnames::DEFAULT_DIRS
                    .iter()
                    .map(Into::into)
                    .collect()
            } else {
                args.pod_metadata_dirs
            };
            let m = Metrics::new(
                agent.clone(),
                service.slow_client_counter(),
                dirs,
                args.metrics_pod_cap,
                gpus,
            );
            tasks.push(tokio::spawn(metrics::http::serve(l, Arc::new(m))));
            Some(address)
        }
        None => None,
    };
    let ready = serde_json::json!({
        "listening": listener.address(),
        "node": node,
        "attach_mode": mode,
        "metrics": metrics_address,
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
    }
    let shutdown = async move {
        tokio::select! {
            _ = sigint.recv() => {},
            _ = sigterm.recv() => {},
        }
    };
    let stopped = service::serve(service, &token, listener, args.idle_timeout, shutdown).await;
    for t in tasks {
        t.abort();
    }
    agent.shutdown();
    match stopped? {
        Stopped::Idle => log::warn!("no client for {:?}: exiting", args.idle_timeout),
        Stopped::Shutdown => log::info!("shutting down"),
    }
    Ok(())
}
