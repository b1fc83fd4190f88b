//! The client's side: time to first output of a local `trace network` (against tcpdump and
//! bpftrace), and how fast the merge of 50 agent streams goes.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use kubectl_orb8::merge::{Merged, merge_events};
use orb8_proto as pb;
use orb8_testkit::{Topology, spawn_in};

use super::{
    Ctx,
    report::{Row, Section},
    stats::Sample,
};

/// Seconds from spawn to the first stdout line not starting with `skip`.
fn first_line_s(mut cmd: Command, skip: &str) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let elapsed = loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            anyhow::bail!("{cmd:?} ended without output");
        }
        if skip.is_empty() || !line.starts_with(skip) {
            break t0.elapsed().as_secs_f64();
        }
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    Ok(elapsed)
}

/// Time to the first line of a live network trace on this host.
pub fn first_output(ctx: &Ctx) -> anyhow::Result<Section> {
    let topo = Topology::new(1);
    let pod = &topo.pods[0];
    let stop = Arc::new(AtomicBool::new(false));
    // Traffic all along, so the first line comes as soon as the tool can see packets.
    let traffic = {
        let stop = stop.clone();
        let src = pod.ip4.clone();
        spawn_in(&pod.ns, move |ready| {
            let s = std::net::UdpSocket::bind(format!("{src}:0")).expect("bind");
            let _ = ready.send(());
            let mut port = 20000u16;
            while !stop.load(Ordering::Relaxed) {
                let _ = s.send_to(b"x", ("10.77.1.1", port));
                port = if port == 60000 { 20000 } else { port + 1 };
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let node = topo.node.name.clone();
    let client = ctx.bin("kubectl-orb8");
    let host_if = pod.host_if.clone();
    type Make = Box<dyn Fn() -> (Command, &'static str)>;
    let mut variants: Vec<(String, String, Make)> = vec![(
        "orb8 --local trace network".into(),
        format!(
            "ip netns exec NODE {} --local trace network -o json",
            client.display()
        ),
        {
            let (node, client) = (node.clone(), client.clone());
            Box::new(move || {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &node]).arg(&client).args([
                    "--local",
                    "trace",
                    "network",
                    "-o",
                    "json",
                    "--duration",
                    "30s",
                ]);
                (c, "")
            })
        },
    )];
    if let Some(agent) = ctx.baseline_agent() {
        let (node, client) = (node.clone(), client.clone());
        variants.push((
            "orb8 --local trace network (baseline agent)".into(),
            format!(
                "ORB8_AGENT_BINARY={} ip netns exec NODE {} --local trace network -o json",
                agent.display(),
                client.display()
            ),
            Box::new(move || {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &node])
                    .arg(&client)
                    .args([
                        "--local",
                        "trace",
                        "network",
                        "-o",
                        "json",
                        "--duration",
                        "30s",
                    ])
                    .env("ORB8_AGENT_BINARY", &agent);
                (c, "")
            }),
        ));
    }
    {
        let (node, host_if) = (node.clone(), host_if.clone());
        variants.push((
            "tcpdump".into(),
            "ip netns exec NODE tcpdump -l -n -i VETH".into(),
            Box::new(move || {
                let mut c = Command::new("ip");
                c.args([
                    "netns", "exec", &node, "tcpdump", "-l", "-n", "-i", &host_if,
                ]);
                (c, "")
            }),
        ));
    }
    let script = "tracepoint:net:netif_receive_skb { printf(\"%d\\n\", args->len); }";
    variants.push((
        "bpftrace".into(),
        format!("bpftrace -e '{script}'"),
        Box::new(move || {
            let mut c = Command::new("bpftrace");
            c.args(["-e", script]);
            (c, "Attaching")
        }),
    ));
    let mut samples = vec![Sample::default(); variants.len()];
    let result = (|| -> anyhow::Result<()> {
        for round in 0..ctx.rounds {
            for ((name, _, make), s) in variants.iter().zip(samples.iter_mut()) {
                eprintln!("bench: first output: round {} {name}", round + 1);
                let (cmd, skip) = make();
                s.push(first_line_s(cmd, skip)?);
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    result?;
    Ok(Section {
        title: "Time to first output, local".into(),
        method: format!(
            "Seconds from spawning the command to its first line of output, with a pod sending a \
             UDP packet every 2 ms through the traced veth; {} rounds, interleaved.",
            ctx.rounds
        ),
        columns: vec!["seconds".into()],
        base: None,
        rows: variants
            .into_iter()
            .zip(samples)
            .map(|((name, command, _), s)| Row {
                name,
                values: vec![s],
                command,
            })
            .collect(),
        notes: vec!["Aim: < 0.15 s for orb8.".into()],
    })
}

fn cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is valid and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn event(node: &str, seq: u64) -> pb::Event {
    pb::Event {
        node: node.to_string(),
        seq,
        time_unix_nanos: seq as i64,
        kind: Some(pb::event::Kind::NewFlow(pb::Flow {
            node: node.to_string(),
            interface: "eth0".into(),
            protocol: 17,
            src_addr: vec![10, 0, 0, 1],
            dst_addr: vec![10, 0, 0, 2],
            src_port: (seq % 60000) as u32,
            dst_port: 53,
            packets: 1,
            bytes: 64,
            ..Default::default()
        })),
    }
}

type Streams = Vec<(
    String,
    futures::stream::BoxStream<'static, Result<pb::Event, tonic::Status>>,
)>;

fn streams(n: usize, per: u64) -> Streams {
    (0..n)
        .map(|i| {
            let node = format!("node-{i}");
            let name = node.clone();
            let s = futures::stream::iter(1..=per).map(move |seq| Ok(event(&name, seq)));
            (node, s.boxed())
        })
        .collect()
}

/// Events/s through the client's merge of 50 agent streams, and CPU per million events.
pub fn merge_throughput(ctx: &Ctx) -> anyhow::Result<Section> {
    const AGENTS: usize = 50;
    let total = ctx.scale(2_000_000);
    let per = total / AGENTS as u64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut gen_only = (Sample::default(), Sample::default());
    let mut merged = (Sample::default(), Sample::default());
    for _ in 0..ctx.rounds {
        // The events alone, made and dropped: what the merge adds is the difference.
        let (t, c) = (Instant::now(), cpu_s());
        let n = rt.block_on(async {
            let mut n = 0u64;
            for (_, mut s) in streams(AGENTS, per) {
                while let Some(Ok(_)) = s.next().await {
                    n += 1;
                }
            }
            n
        });
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_s() - c);
        gen_only.0.push(n as f64 / wall);
        gen_only.1.push(cpu * 1000.0 * 1e6 / n as f64);
        let (t, c) = (Instant::now(), cpu_s());
        let n = rt.block_on(async {
            let mut m = merge_events(streams(AGENTS, per));
            let mut n = 0u64;
            while let Some(item) = m.next().await {
                if let Merged::Event { .. } = item {
                    n += 1;
                }
            }
            n
        });
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_s() - c);
        anyhow::ensure!(n == per * AGENTS as u64, "the merge delivered {n} events");
        merged.0.push(n as f64 / wall);
        merged.1.push(cpu * 1000.0 * 1e6 / n as f64);
    }
    let cmd = "xtask bench --only merge".to_string();
    Ok(Section {
        title: format!("Client merge of {AGENTS} agent streams"),
        method: format!(
            "{total} new-flow events from {AGENTS} in-memory streams through \
             `kubectl_orb8::merge::merge_events` (sequence tracking, gap detection), on one \
             thread; the first row only makes the same events, so the difference is the \
             merge's cost. {} rounds, interleaved; {} build.",
            ctx.rounds, ctx.profile
        ),
        columns: vec!["events/s".into(), "CPU ms per million events".into()],
        base: None,
        rows: vec![
            Row {
                name: "events made, no merge".into(),
                values: vec![gen_only.0, gen_only.1],
                command: cmd.clone(),
            },
            Row {
                name: "through merge_events".into(),
                values: vec![merged.0, merged.1],
                command: cmd,
            },
        ],
        notes: vec!["Aim: >= 200k new flows/s end to end.".into()],
    })
}
