//! The flow probe: its cost per packet (BPF_PROG_TEST_RUN), and an agent holding 100k flows
//! (its memory, `GetStatus` latency, the client's memory reading them).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use orb8_common::names;
use orb8_testkit::{NetNs, Topology, spawn_in, wait_attached};

use super::{
    Ctx,
    report::{Row, Section},
    stats::Sample,
    tools::{ReadyOn, Running, rss_kib},
};

/// A 64-byte Ethernet/IPv4/TCP ACK frame from 10.9.0.1:`sport` to 10.9.0.2:`dport`.
fn frame(sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2,
    ]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(64, 0);
    f
}

struct Loaded(aya::Ebpf);

impl Loaded {
    fn program(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .0
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }
}

fn load(bytes: &[u8]) -> anyhow::Result<Loaded> {
    let ebpf = EbpfLoader::without_btf()
        .map_max_entries(names::FLOWS, 1024)
        .load(bytes)
        .context("loading the flow object")?;
    let mut l = Loaded(ebpf);
    for name in [names::TC_INGRESS, names::BENCH_NOOP] {
        l.program(name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    Ok(l)
}

fn ns_per_run(l: &mut Loaded, name: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let r = l.program(name)?.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..Default::default()
    })?;
    Ok(r.duration.as_nanos() as f64)
}

/// The TC program's cost per packet for a flow already in the table.
pub fn tc_cost(ctx: &Ctx) -> anyhow::Result<Section> {
    let mut objects = vec![(
        "orb8 TC probe".to_string(),
        orb8_agent::ebpf::OBJECT.to_vec(),
    )];
    if let Some(b) = ctx.baseline_file("orb8") {
        objects.push((
            "orb8 TC probe (baseline)".into(),
            std::fs::read(&b).with_context(|| format!("reading {}", b.display()))?,
        ));
    }
    let mut loaded: Vec<Loaded> = objects
        .iter()
        .map(|(_, o)| load(o))
        .collect::<anyhow::Result<_>>()?;
    let f = frame(40000, 443);
    let repeat = ctx.scale(1_000_000) as u32;
    for l in &mut loaded {
        ns_per_run(l, names::TC_INGRESS, &f, 1)?; // creates the flow
    }
    let mut noop = Sample::default();
    let mut probe = vec![(Sample::default(), Sample::default()); loaded.len()];
    for _ in 0..ctx.rounds * 3 {
        for (l, s) in loaded.iter_mut().zip(probe.iter_mut()) {
            let n = ns_per_run(l, names::BENCH_NOOP, &f, repeat)?;
            let p = ns_per_run(l, names::TC_INGRESS, &f, repeat)?;
            noop.push(n);
            s.0.push(p);
            s.1.push(p - n);
        }
    }
    let cmd = |what: &str| {
        format!(
            "BPF_PROG_TEST_RUN of {what} on a 64 B TCP frame, repeat {repeat} (xtask bench --only tc)"
        )
    };
    let mut rows = vec![Row {
        name: "no-op TC program".into(),
        values: vec![noop, Sample::default()],
        command: cmd(names::BENCH_NOOP),
    }];
    for ((name, _), (p, d)) in objects.iter().zip(probe) {
        rows.push(Row {
            name: name.clone(),
            values: vec![p, d],
            command: cmd(names::TC_INGRESS),
        });
    }
    Ok(Section {
        title: "TC program, 64 B TCP packet of an existing flow".into(),
        method: format!(
            "The kernel's mean time per run over {repeat} runs (BPF_PROG_TEST_RUN), the no-op \
             program and the probe measured back to back, {} times; the difference is the \
             probe's own cost.",
            ctx.rounds * 3
        ),
        columns: vec!["ns/packet".into(), "ns above no-op".into()],
        base: None,
        rows,
        notes: vec![
            "Aim: <= 35 ns above the no-op program (a plain C parse + LRU-hash hit measured ~47 ns on this machine kind).".into(),
        ],
    })
}

/// Fills `count` distinct UDP flows from the first pod to its node: two sockets (source ports)
/// × destination ports 1..=count/2, one datagram each, unpaced.
pub fn send_flows(topo: &Topology, count: u32) {
    let src = topo.pods[0].ip4.clone();
    let _ = spawn_in(&topo.pods[0].ns, move |ready| {
        let socks: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| std::net::UdpSocket::bind(format!("{src}:0")).expect("bind"))
            .collect();
        for i in 0..count {
            let port = 1 + (i / 2) as u16;
            let _ = socks[(i % 2) as usize].send_to(b"x", ("10.77.1.1", port));
        }
        let _ = ready.send(());
    })
    .join();
}

struct AgentRun {
    flows: u64,
    peak_kib: u64,
    rss_kib: u64,
    status_ms: Sample,
    client_peak_kib: u64,
    client_s: f64,
    /// Client peak RSS KiB for other output forms of the same table: (flags, KiB).
    client_other_kib: Vec<(&'static str, u64)>,
}

/// Other output forms whose client peak RSS is reported beside the default `-o json`.
const CLIENT_FORMS: [&str; 2] = ["--by connection -o json", "-o table"];

/// Peak RSS (KiB) of `kubectl-orb8 ... flows --duration 0s FLAGS` against the agent at `addr`.
fn client_peak(ctx: &Ctx, node: &str, addr: &str, flags: &str) -> anyhow::Result<u64> {
    let client = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(ctx.bin("kubectl-orb8"))
        .args(["--agent", addr, "--token", TOKEN])
        .args(["flows", "--duration", "0s"])
        .args(flags.split(' '))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(client.id() as i32, &mut status, 0, &mut ru) };
    if r < 0 || status != 0 {
        bail!("kubectl-orb8 flows {flags} failed (wait status {status})");
    }
    Ok(ru.ru_maxrss as u64)
}

fn status_times(node: &NetNs, addr: String, calls: usize) -> anyhow::Result<(u64, Sample)> {
    node.run_in(move || -> anyhow::Result<(u64, Sample)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            let mut client = orb8_proto::agent_service_client::AgentServiceClient::with_interceptor(
                ch,
                |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert(
                        orb8_proto::TOKEN_METADATA_KEY,
                        orb8_proto::bearer(TOKEN).parse().expect("ascii"),
                    );
                    Ok(r)
                },
            );
            let mut s = Sample::default();
            let mut flows = 0;
            for _ in 0..calls {
                let t = Instant::now();
                let r = client
                    .get_status(orb8_proto::GetStatusRequest {})
                    .await?
                    .into_inner();
                s.push(t.elapsed().as_secs_f64() * 1000.0);
                flows = r.counters.map_or(0, |c| c.active_flows);
            }
            Ok((flows, s))
        })
    })
}

/// The token the benchmarks' agents accept.
pub const TOKEN: &str = "orb8-bench-session-token";

/// An agent serving in the node namespace on a loopback port, attached to the pod's veth
/// `host_if` (attached when this returns), with `extra` flags: the agent and the address its
/// ready line gave.
pub fn start_agent(
    agent: &Path,
    node: &NetNs,
    host_if: &str,
    extra: &[&str],
) -> anyhow::Result<(Running, String)> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &node.name])
        .arg(agent)
        .args(["serve", "--listen", "127.0.0.1:0", "--idle-timeout", "10m"])
        .args(["-i", host_if])
        .args(extra)
        .env("ORB8_AGENT_TOKEN", TOKEN);
    let (running, line) =
        Running::start_with_line(c, ReadyOn::Stdout("{"), Duration::from_secs(60))?;
    let addr = line
        .split("\"listening\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .with_context(|| format!("agent ready line {line:?}"))?
        .to_string();
    wait_attached(node, host_if);
    Ok((running, addr))
}

fn agent_with_flows(ctx: &Ctx, agent: &Path, count: u32) -> anyhow::Result<AgentRun> {
    let topo = Topology::new(1);
    let host_if = topo.pods[0].host_if.clone();
    let (running, addr) = start_agent(agent, &topo.node, &host_if, &["--flow-map-size", "131072"])?;
    send_flows(&topo, count);
    // Until the table stops growing.
    let mut last = 0;
    let end = Instant::now() + Duration::from_secs(30);
    let flows = loop {
        std::thread::sleep(Duration::from_millis(300));
        let (n, _) = status_times(&topo.node, addr.clone(), 1)?;
        if (n == last && n > 0) || Instant::now() > end {
            break n;
        }
        last = n;
    };
    let (_, status_ms) = status_times(&topo.node, addr.clone(), ctx.rounds * 3)?;
    let (peak_kib, rss_kib) = rss_kib(running.pid());
    let t = Instant::now();
    let client = Command::new("ip")
        .args(["netns", "exec", &topo.node.name])
        .arg(ctx.bin("kubectl-orb8"))
        .args([
            "--agent",
            &addr,
            "--token",
            TOKEN,
            "flows",
            "--duration",
            "1s",
            "-o",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(client.id() as i32, &mut status, 0, &mut ru) };
    if r < 0 || status != 0 {
        bail!("kubectl-orb8 flows failed (wait status {status})");
    }
    let client_s = t.elapsed().as_secs_f64();
    let mut client_other_kib = Vec::new();
    for flags in CLIENT_FORMS {
        client_other_kib.push((flags, client_peak(ctx, &topo.node.name, &addr, flags)?));
    }
    drop(running);
    Ok(AgentRun {
        flows,
        peak_kib,
        rss_kib,
        status_ms,
        client_peak_kib: ru.ru_maxrss as u64,
        client_s,
        client_other_kib,
    })
}

/// An agent holding 100k flows: memory, `GetStatus`, and the client reading the table.
pub fn flows_100k(ctx: &Ctx) -> anyhow::Result<Section> {
    let count = ctx.scale(100_000) as u32;
    let mut agents = vec![("orb8-agent".to_string(), ctx.bin("orb8-agent"))];
    if let Some(a) = ctx.baseline_agent() {
        agents.push(("orb8-agent (baseline)".into(), a));
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, bin) in &agents {
        eprintln!("bench: {count} flows: {name}");
        let r = agent_with_flows(ctx, bin, count)?;
        let one = |v: f64| Sample(vec![v]);
        notes.push(format!(
            "{name}: {} flows in the table after {count} distinct UDP flows were sent; the \
             client's `flows` took {:.2} s.",
            r.flows, r.client_s
        ));
        notes.push(format!(
            "{name}: client peak RSS for other forms of the same table: {}.",
            r.client_other_kib
                .iter()
                .map(|(flags, kib)| format!("`{flags}` {:.0} MiB", *kib as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        rows.push(Row {
            name: name.clone(),
            values: vec![
                one(r.peak_kib as f64 / 1024.0),
                one(r.rss_kib as f64 / 1024.0),
                r.status_ms,
                one(r.client_peak_kib as f64 / 1024.0),
            ],
            command: format!(
                "ip netns exec NODE {} serve --flow-map-size 131072 -i VETH; {count} UDP flows; \
                 GetStatus; kubectl-orb8 --agent ADDR flows --duration 1s -o json",
                bin.display()
            ),
        });
    }
    notes.push(
        "Aims: agent < 32 MiB, client < 64 MiB, GetStatus < 5 ms. The client reads the table \
         page by page (ListFlows, 4096 flows a page), turning each page into rows as it comes: \
         its peak is the rows themselves (one `FlowRecord` per flow, node and interface names \
         included), the grouping and the JSON text are not held whole beside them. Tables \
         (`-o table`) are laid out by comfy-table over every cell at once and cost far more."
            .into(),
    );
    Ok(Section {
        title: format!("Agent holding {count} flows (flow map 131072)"),
        method: "An agent serving in a network namespace attached to one veth; a pod sends one \
                 UDP packet per flow to its node; once the table stops growing: the agent's peak \
                 and current RSS, `GetStatus` round trips (which count the flows), and the peak \
                 RSS of `kubectl-orb8 flows` reading the whole table."
            .into(),
        columns: vec![
            "agent peak RSS MiB".into(),
            "agent RSS MiB".into(),
            "GetStatus ms".into(),
            "client peak RSS MiB".into(),
        ],
        base: None,
        rows,
        notes,
    })
}
