//! Traffic through a traced veth: 64-byte UDP packets per second and TCP throughput with
//! nothing, the orb8 agent or tcpdump watching the pod's veth, and new flows delivered from the
//! kernel to `kubectl-orb8 trace network` end to end (with every loss the client reports).
//!
//! All traffic stays between the namespaces of one testkit [`Topology`] (a node and a pod,
//! 10.77.1.x), removed when the scenario ends; every loop is bounded in count and time.

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use orb8_testkit::{Topology, spawn_in};
use serde_json::Value;

use super::{
    Ctx,
    network::{TOKEN, send_flows, start_agent},
    report::{Row, Section},
    stats::Sample,
    tools::{ReadyOn, Running},
};

/// The node's address on the pod's veth: where every packet of these scenarios goes.
const NODE_IP: &str = "10.77.1.1";
/// UDP payload bytes making a 64-byte Ethernet frame (14 + 20 IPv4 + 8 UDP + 22).
const PAYLOAD_64B_FRAME: usize = 22;
/// Sending sockets (flows) of the UDP packet-rate sender.
const PPS_FLOWS: usize = 4;
/// Where the packet-rate receiver listens (in the node).
const PPS_PORT: u16 = 9000;
/// A port nothing listens on: the sender's warm-up datagram (neighbour resolution) goes there.
const WARMUP_PORT: u16 = 9001;
/// The iperf3 server's port (in the node).
const IPERF_PORT: &str = "5201";
/// Destination port of the datagrams that show the client's stream is open (outside the
/// burst's ports 1..=count/2).
const MARKER_PORT: u16 = 65000;

/// What watches the pod's veth during a run: it starts the watcher (`None` for the bare run).
type Watcher = Box<dyn Fn(&Topology) -> anyhow::Result<Option<Running>>>;

/// A capture tool's variant: `tcpdump -i VETH -w /dev/null` plus `extra`, in the node.
fn tcpdump(extra: &'static [&'static str]) -> Watcher {
    Box::new(move |topo: &Topology| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &topo.node.name, "tcpdump", "-i"])
            .arg(&topo.pods[0].host_if)
            .args(["-w", "/dev/null"])
            .args(extra);
        let r = Running::start(
            c,
            ReadyOn::Stderr("tcpdump: listening on"),
            Duration::from_secs(20),
        )?;
        Ok(Some(r))
    })
}

/// The variants both traffic scenarios compare: (row name, command shown, watcher).
fn watchers(ctx: &Ctx, tcpdump_snaplen: bool) -> Vec<(String, String, Watcher)> {
    let agent = |bin: std::path::PathBuf| -> Watcher {
        Box::new(move |topo: &Topology| {
            let (r, _) = start_agent(&bin, &topo.node, &topo.pods[0].host_if, &[])?;
            Ok(Some(r))
        })
    };
    let mut v: Vec<(String, String, Watcher)> = vec![
        (
            "no capture".into(),
            String::new(),
            Box::new(|_: &Topology| Ok(None)),
        ),
        (
            "orb8 agent attached".into(),
            format!(
                "ip netns exec NODE {} serve --listen 127.0.0.1:0 -i VETH & ",
                ctx.bin("orb8-agent").display()
            ),
            agent(ctx.bin("orb8-agent")),
        ),
    ];
    if let Some(b) = ctx.baseline_agent() {
        v.push((
            "orb8 agent attached (baseline)".into(),
            format!(
                "ip netns exec NODE {} serve --listen 127.0.0.1:0 -i VETH & ",
                b.display()
            ),
            agent(b),
        ));
    }
    v.push((
        "tcpdump".into(),
        "ip netns exec NODE tcpdump -i VETH -w /dev/null & ".into(),
        tcpdump(&[]),
    ));
    if tcpdump_snaplen {
        v.push((
            "tcpdump -s 96".into(),
            "ip netns exec NODE tcpdump -i VETH -w /dev/null -s 96 & ".into(),
            tcpdump(&["-s", "96"]),
        ));
    }
    v
}

/// Packets captured and dropped by the kernel, as tcpdump says on its way out (`N packets
/// captured`, `N packets dropped by kernel`); `None` for other output.
fn tcpdump_counts(stderr: &[String]) -> Option<(u64, u64)> {
    let find = |what: &str| {
        stderr
            .iter()
            .find_map(|l| l.strip_suffix(what)?.trim().parse::<u64>().ok())
    };
    Some((
        find(" packets captured")?,
        find(" packets dropped by kernel")?,
    ))
}

/// What the captures said over a scenario's runs: per variant, packets captured and dropped.
#[derive(Default, Clone)]
struct Captured(Option<(u64, u64)>);

impl Captured {
    fn add(&mut self, stderr: &[String]) {
        if let Some((c, d)) = tcpdump_counts(stderr) {
            let (tc, td) = self.0.get_or_insert((0, 0));
            *tc += c;
            *td += d;
        }
    }

    /// A note for the variant `name`, when it was a tcpdump.
    fn note(&self, name: &str) -> Option<String> {
        let (c, d) = self.0?;
        Some(format!(
            "{name}: {c} packets captured and {d} dropped by the kernel over all its runs (what \
             tcpdump said when stopped)."
        ))
    }
}

/// One packet-rate run: datagrams sent and received, over the sender's seconds.
struct Pps {
    sent: u64,
    received: u64,
    secs: f64,
}

/// Sends 64-byte-frame datagrams from the pod to the node for `dur` (at most `max`), from
/// [`PPS_FLOWS`] sockets in turn, while a socket in the node counts what arrives.
fn udp_run(topo: &Topology, dur: Duration, max: u64) -> anyhow::Result<Pps> {
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = stop.clone();
        spawn_in(&topo.node, move |ready| -> anyhow::Result<u64> {
            let s = UdpSocket::bind((NODE_IP, PPS_PORT)).context("binding the receiver")?;
            // The socket's queue is not what is measured: make it large.
            let big: libc::c_int = 16 << 20;
            // SAFETY: setsockopt on an open socket with a valid int option.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&big as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready.send(());
            let deadline = Instant::now() + dur + Duration::from_secs(10);
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            loop {
                match s.recv(&mut buf) {
                    Ok(_) => {
                        n += 1;
                        if n.is_multiple_of(1024) && Instant::now() > deadline {
                            break;
                        }
                    }
                    // Quiet for a while after the sender stopped: everything has arrived.
                    Err(_) if stop.load(Ordering::Relaxed) || Instant::now() > deadline => break,
                    Err(_) => {}
                }
            }
            Ok(n)
        })
    };
    let src = topo.pods[0].ip4.clone();
    let sender = spawn_in(
        &topo.pods[0].ns,
        move |ready| -> anyhow::Result<(u64, f64)> {
            let socks = (0..PPS_FLOWS)
                .map(|_| UdpSocket::bind((src.as_str(), 0)))
                .collect::<Result<Vec<_>, _>>()
                .context("binding the senders")?;
            let payload = [0x5au8; PAYLOAD_64B_FRAME];
            for s in &socks {
                let _ = s.send_to(&payload, (NODE_IP, WARMUP_PORT));
            }
            thread::sleep(Duration::from_millis(20));
            let _ = ready.send(());
            let t = Instant::now();
            let (mut sent, mut i) = (0u64, 0u64);
            while i < max {
                if i.is_multiple_of(256) && t.elapsed() >= dur {
                    break;
                }
                if socks[i as usize % PPS_FLOWS]
                    .send_to(&payload, (NODE_IP, PPS_PORT))
                    .is_ok()
                {
                    sent += 1;
                }
                i += 1;
            }
            Ok((sent, t.elapsed().as_secs_f64()))
        },
    );
    let sent = sender
        .join()
        .map_err(|_| anyhow!("the UDP sender panicked"));
    stop.store(true, Ordering::Relaxed);
    let received = receiver
        .join()
        .map_err(|_| anyhow!("the UDP receiver panicked"))??;
    let (sent, secs) = sent??;
    Ok(Pps {
        sent,
        received,
        secs,
    })
}

/// 64-byte UDP packets per second from a pod to its node, bare and with a capture attached.
pub fn udp_pps(ctx: &Ctx) -> anyhow::Result<Section> {
    let dur = Duration::from_millis(if ctx.quick { 300 } else { 2000 });
    let max = ctx.scale(20_000_000);
    let topo = Topology::new(1);
    let variants = watchers(ctx, true);
    let mut samples = vec![(Sample::default(), Sample::default()); variants.len()];
    let mut captured = vec![Captured::default(); variants.len()];
    let (mut all_sent, mut all_received) = (0u64, 0u64);
    for round in 0..ctx.rounds {
        for (((name, _, watch), s), cap) in variants
            .iter()
            .zip(samples.iter_mut())
            .zip(captured.iter_mut())
        {
            eprintln!("bench: udp-pps: round {} {name}", round + 1);
            let watcher = watch(&topo)?;
            let r = udp_run(&topo, dur, max);
            cap.add(&watcher.map(Running::stop).unwrap_or_default());
            let r = r?;
            all_sent += r.sent;
            all_received += r.received;
            s.0.push(r.sent as f64 / r.secs);
            s.1.push(r.received as f64 / r.secs);
        }
    }
    let secs = dur.as_secs_f64();
    let mut notes: Vec<String> = variants
        .iter()
        .zip(&captured)
        .filter_map(|((name, _, _), c)| c.note(name))
        .collect();
    notes.push(if all_sent == all_received {
        format!(
            "Over all runs {all_sent} datagrams were sent and every one was received: the veth \
             delivers in the sender's own context, so the sender's rate is the path's rate."
        )
    } else {
        format!("Over all runs {all_sent} datagrams were sent and {all_received} received.")
    });
    notes.push(
        "Aim: >= 0.95x of no capture with the orb8 agent attached (tcpdump 0.84x, `-s 96` 0.85x \
         measured when issue 11 was filed)."
            .into(),
    );
    Ok(Section {
        title: "64 B UDP packets per second through a traced veth".into(),
        method: format!(
            "A pod sends {PAYLOAD_64B_FRAME}-byte UDP datagrams (64-byte Ethernet frames) to \
             its node over the testkit veth pair, from {PPS_FLOWS} sockets (flows) in turn, as \
             fast as one thread can for {secs} s (at most {max} datagrams); a socket in the node \
             counts what arrives. Packets per second sent and received, over the sender's \
             time; {} rounds, variants interleaved; each capture is started before and stopped \
             after its run.",
            ctx.rounds
        ),
        columns: vec!["sent packets/s".into(), "received packets/s".into()],
        base: Some(0),
        rows: variants
            .into_iter()
            .zip(samples)
            .map(|((name, watcher, _), (sent, received))| Row {
                name,
                values: vec![sent, received],
                command: format!(
                    "{watcher}xtask bench --only udp-pps (pod POD:{PPS_FLOWS} sockets -> \
                     {NODE_IP}:{PPS_PORT}, {secs} s)"
                ),
            })
            .collect(),
        notes,
    })
}

/// The receiver's bits per second of an `iperf3 -J` client report.
fn iperf3_bps(json: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 -J output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 -J output has no end.sum_received.bits_per_second")
}

/// TCP throughput from a pod to its node (iperf3), bare and with a capture attached.
pub fn tcp_throughput(ctx: &Ctx) -> anyhow::Result<Section> {
    let secs = if ctx.quick { "1" } else { "2" };
    let topo = Topology::new(1);
    let mut server = Command::new("ip");
    server
        .args([
            "netns",
            "exec",
            &topo.node.name,
            "iperf3",
            "-s",
            "-B",
            NODE_IP,
        ])
        .args(["-p", IPERF_PORT, "--forceflush"]);
    let server = Running::start(
        server,
        ReadyOn::Stdout("Server listening"),
        Duration::from_secs(20),
    )?;
    let variants = watchers(ctx, false);
    let mut samples = vec![Sample::default(); variants.len()];
    let mut captured = vec![Captured::default(); variants.len()];
    for round in 0..ctx.rounds {
        for (((name, _, watch), s), cap) in variants
            .iter()
            .zip(samples.iter_mut())
            .zip(captured.iter_mut())
        {
            eprintln!("bench: tcp-throughput: round {} {name}", round + 1);
            let watcher = watch(&topo)?;
            // `timeout` bounds a client that never finishes; it is waited for here.
            let out = Command::new("ip")
                .args(["netns", "exec", &topo.pods[0].ns.name])
                .args(["timeout", "60", "iperf3", "-c", NODE_IP, "-p", IPERF_PORT])
                .args(["-t", secs, "-J"])
                .output()
                .context("running iperf3 -c");
            cap.add(&watcher.map(Running::stop).unwrap_or_default());
            let out = out?;
            let bps = iperf3_bps(&String::from_utf8_lossy(&out.stdout))
                .with_context(|| format!("{name}: {}", String::from_utf8_lossy(&out.stderr)))?;
            s.push(bps / 1e9);
        }
    }
    drop(server);
    let mut notes: Vec<String> = variants
        .iter()
        .zip(&captured)
        .filter_map(|((name, _, _), c)| c.note(name))
        .collect();
    notes.push(
        "Aim: keep >= 0.99x with the orb8 agent attached (tcpdump 0.94x when issue 11 was \
         filed)."
            .into(),
    );
    Ok(Section {
        title: "TCP throughput through a traced veth".into(),
        method: format!(
            "iperf3, one TCP stream for {secs} s from a pod to an iperf3 server in its node, \
             over the testkit veth pair; the receiver's Gbit/s. {} rounds, variants \
             interleaved; each capture is started before and stopped after its run.",
            ctx.rounds
        ),
        columns: vec!["Gbit/s".into()],
        base: Some(0),
        rows: variants
            .into_iter()
            .zip(samples)
            .map(|((name, watcher, _), s)| Row {
                name,
                values: vec![s],
                command: format!(
                    "ip netns exec NODE iperf3 -s -B {NODE_IP} & {watcher}ip netns exec POD \
                     iperf3 -c {NODE_IP} -t {secs} -J"
                ),
            })
            .collect(),
        notes,
    })
}

/// What a `trace network -o json` client printed for one burst, and what it said on stderr.
#[derive(Debug, Default, PartialEq)]
struct Delivered {
    /// Distinct burst flows printed as `new_flow`.
    flows: u64,
    /// `new_flow` lines of the burst printed more than once.
    repeats: u64,
    /// Events lost by the client's gap records, by `stage/reason`.
    gaps: BTreeMap<String, u64>,
    /// Events lost by the client's stderr lines (`N events lost`, `N events missing`).
    stderr_lost: u64,
    /// Events the client said it received but did not print when stopped.
    unprinted: u64,
    /// Index (in the lines given) of the last burst flow printed.
    last: Option<usize>,
}

/// Whether a JSON line is a `new_flow` of the burst: UDP from `src` to the node, destination
/// port in `ports`.
fn burst_flow(v: &Value, src: &str, ports: std::ops::RangeInclusive<u64>) -> Option<(u64, u64)> {
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let dport = v["dst_port"].as_u64()?;
    (s("event") == "new_flow"
        && s("protocol").eq_ignore_ascii_case("udp")
        && s("src") == src
        && s("dst") == NODE_IP
        && ports.contains(&dport))
    .then(|| Some((v["src_port"].as_u64()?, dport)))
    .flatten()
}

/// The first number of a stderr line's message (`orb8: warning: NODE: 12 events lost ...`).
fn count_in(line: &str) -> u64 {
    let msg = line.strip_prefix("orb8: warning: ").unwrap_or(line);
    let first = |m: &str| m.split_whitespace().next()?.parse().ok();
    // The message's first word, or the first after `NODE: ` when it names a node.
    first(msg)
        .or_else(|| first(msg.split_once(": ")?.1))
        .unwrap_or(0)
}

/// Reads a burst's client output: stdout lines (JSON) and stderr lines.
fn delivered(stdout: &[String], stderr: &[String], src: &str, count: u64) -> Delivered {
    let mut d = Delivered::default();
    let mut seen = HashSet::new();
    let ports = 1..=count.div_ceil(2);
    for (i, line) in stdout.iter().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["event"] == "gap" {
            let key = format!(
                "{}/{}",
                v["stage"].as_str().unwrap_or("?"),
                v["reason"].as_str().unwrap_or("?")
            );
            *d.gaps.entry(key).or_default() += v["lost"].as_u64().unwrap_or(0);
        } else if let Some(k) = burst_flow(&v, src, ports.clone()) {
            if seen.insert(k) {
                d.flows += 1;
            } else {
                d.repeats += 1;
            }
            d.last = Some(i);
        }
    }
    for l in stderr {
        if l.contains(" events lost (") || l.contains(" events missing (") {
            d.stderr_lost += count_in(l);
        } else if l.contains("received but not printed") {
            d.unprinted += count_in(l);
        }
    }
    d
}

/// Where a burst's new flows come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// UDP datagrams from the pod to the node, through the veth (and the network stack).
    Datagrams,
    /// The same flows' frames run through the agent's loaded TC program by
    /// `BPF_PROG_TEST_RUN`: no network stack, no veth.
    TestRun,
}

/// A 64-byte Ethernet/IPv4/UDP frame from `src`:`sport` to the node (`NODE_IP`):`dport`.
fn udp_frame(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let node: std::net::Ipv4Addr = NODE_IP.parse().expect("NODE_IP is an address");
    f.extend_from_slice(&[0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&node.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 30, 0, 0]);
    f.resize(64, 0);
    f
}

/// The newest loaded program named `orb8_tc_ingress`: the agent just started.
fn agent_tc_program() -> anyhow::Result<aya::programs::ProgramFd> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(orb8_common::names::TC_INGRESS))
        .max_by_key(|p| p.id())
        .with_context(|| format!("no loaded {} program", orb8_common::names::TC_INGRESS))?;
    Ok(info.fd()?)
}

/// `count` distinct flows (the ports `send_flows` uses, from `src`) run through the agent's TC
/// program with `BPF_PROG_TEST_RUN`, one frame per call.
fn run_flows(src: &str, count: u32) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    let prog = agent_tc_program()?;
    let src: std::net::Ipv4Addr = src.parse().context("pod address")?;
    // `union bpf_attr`'s `test` member.
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    for i in 0..count {
        // Two source ports per destination port, as `send_flows`'s two sockets.
        let f = udp_frame(src.octets(), 40000 + (i % 2) as u16, 1 + (i / 2) as u16);
        let attr = TestAttr {
            prog_fd: prog.as_fd().as_raw_fd() as u32,
            data_size_in: f.len() as u32,
            data_in: f.as_ptr() as u64,
            repeat: 1,
            ..TestAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size given; `data_in` points at
        // `f`, alive for the call; no output buffers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &attr as *const TestAttr,
                size_of::<TestAttr>() as u32,
            )
        };
        if r < 0 {
            bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One burst through an agent and a client: what came out, in how long.
struct Burst {
    d: Delivered,
    /// Seconds from the first datagram sent to the last burst flow printed.
    secs: f64,
    /// Seconds the sender took.
    send_secs: f64,
    /// CPU seconds (user + system) the agent and the client spent from the stream's opening
    /// to the burst's end.
    agent_cpu: f64,
    client_cpu: f64,
    stderr: Vec<String>,
}

/// CPU seconds (user + system) process `pid` has used so far (`/proc/PID/stat`, clock ticks).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The fields after the command name (which may hold spaces), from the 3rd (state): utime
    // and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) / hz,
        _ => f64::NAN,
    }
}

/// Starts an agent (with `extra` flags) and `trace network -o json` against it, waits until the
/// client's stream is open (a marker flow is printed), sends `count` distinct UDP flows, and
/// reads the client's lines until the burst is accounted for, the lines stop, or a bound.
fn burst(
    ctx: &Ctx,
    topo: &Topology,
    agent: &Path,
    extra: &[&str],
    source: Source,
    count: u32,
) -> anyhow::Result<Burst> {
    let host_if = &topo.pods[0].host_if;
    let mut flags = vec!["--flow-map-size", "131072"];
    flags.extend_from_slice(extra);
    let (agent, addr) = start_agent(agent, &topo.node, host_if, &flags)?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &topo.node.name])
        .arg(ctx.bin("kubectl-orb8"))
        .args(["--agent", &addr, "--token", TOKEN])
        .args(["trace", "network", "-o", "json"]);
    let (client, out, err) = Running::spawn_piped(c)?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let err_reader = thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut lines: Vec<(Instant, String)> = Vec::new();

    // The stream is open once a marker datagram sent after the client started shows up.
    let stop = Arc::new(AtomicBool::new(false));
    let marker = {
        let (stop, src) = (stop.clone(), topo.pods[0].ip4.clone());
        spawn_in(&topo.pods[0].ns, move |ready| {
            let s = UdpSocket::bind((src.as_str(), 0)).expect("binding the marker socket");
            let _ = ready.send(());
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let _ = s.send_to(b"m", (NODE_IP, MARKER_PORT));
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let marker_tag = format!("\"dst_port\":{MARKER_PORT},");
    let opened = (|| {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok((t, l)) = rx.recv_timeout(Duration::from_millis(100)) {
                let hit = l.contains(&marker_tag);
                lines.push((t, l));
                if hit {
                    return true;
                }
            }
        }
        false
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = marker.join();
    if !opened {
        bail!("the client printed no marker flow within 30 s (its stream did not open)");
    }
    let skip = lines.len();

    let cpu0 = (cpu_secs(agent.pid()), cpu_secs(client.pid()));
    let t0 = Instant::now();
    match source {
        Source::Datagrams => send_flows(topo, count),
        Source::TestRun => run_flows(&topo.pods[0].ip4, count)?,
    }
    let send_secs = t0.elapsed().as_secs_f64();
    // Until the burst is accounted for (told cheaply: the pod's UDP new_flow lines and the gap
    // records), the lines stop for 2 s, or a bound.
    let end = t0 + Duration::from_secs(if ctx.quick { 20 } else { 60 });
    let from_pod = format!("\"src\":\"{}\"", topo.pods[0].ip4);
    let (mut new_lines, mut gap_lost) = (0u64, 0u64);
    while Instant::now() < end && new_lines + gap_lost < u64::from(count) {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok((t, l)) => {
                if l.starts_with("{\"event\":\"new_flow\"")
                    && l.contains("\"protocol\":\"udp\"")
                    && l.contains(&from_pod)
                {
                    new_lines += 1;
                } else if l.starts_with("{\"event\":\"gap\"") {
                    gap_lost += serde_json::from_str::<Value>(&l)
                        .ok()
                        .and_then(|v| v["lost"].as_u64())
                        .unwrap_or(0);
                }
                lines.push((t, l));
            }
            Err(_) => break,
        }
    }
    let (agent_cpu, client_cpu) = (
        cpu_secs(agent.pid()) - cpu0.0,
        cpu_secs(client.pid()) - cpu0.1,
    );
    // SIGINT, then what it says on the way out (losses pending, events not printed).
    drop(client);
    let _ = reader.join();
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    drop(agent);

    let (times, text): (Vec<Instant>, Vec<String>) = lines.split_off(skip).into_iter().unzip();
    let d = delivered(&text, &stderr, &topo.pods[0].ip4, u64::from(count));
    let secs = d
        .last
        .map_or(f64::NAN, |i| times[i].duration_since(t0).as_secs_f64());
    Ok(Burst {
        d,
        secs,
        send_secs,
        agent_cpu,
        client_cpu,
        stderr,
    })
}

/// New flows delivered kernel -> agent -> `trace network` client, for a burst of distinct flows.
pub fn new_flows(ctx: &Ctx) -> anyhow::Result<Section> {
    let count = ctx.scale(100_000) as u32;
    let agent = ctx.bin("orb8-agent");
    let mut variants: Vec<(String, std::path::PathBuf, &[&str], Source)> = vec![
        ("orb8".into(), agent.clone(), &[], Source::Datagrams),
        (
            "orb8, flows made by BPF_PROG_TEST_RUN".into(),
            agent.clone(),
            &[],
            Source::TestRun,
        ),
        (
            "orb8, kernel ring 4096 B".into(),
            agent.clone(),
            &["--ringbuf-size", "4096"],
            Source::Datagrams,
        ),
    ];
    if let Some(b) = ctx.baseline_agent() {
        variants.push(("orb8 (baseline agent)".into(), b, &[], Source::Datagrams));
    }
    let topo = Topology::new(1);
    let n = variants.len();
    let mut samples = vec![vec![Sample::default(); 10]; n];
    let mut notes = Vec::new();
    for round in 0..ctx.rounds {
        for ((name, bin, extra, source), s) in variants.iter().zip(samples.iter_mut()) {
            eprintln!("bench: new-flows: round {} {name}", round + 1);
            let b = burst(ctx, &topo, bin, extra, *source, count)?;
            let d = &b.d;
            let gaps: u64 = d.gaps.values().sum();
            let unaccounted = i64::from(count) - d.flows as i64 - gaps as i64;
            s[0].push(d.flows as f64 / b.secs);
            s[1].push(f64::from(count) / b.send_secs);
            s[2].push(d.flows as f64);
            s[3].push(gaps as f64);
            s[4].push(d.stderr_lost as f64);
            s[5].push(unaccounted as f64);
            s[6].push(b.send_secs);
            s[7].push(b.agent_cpu * 1000.0);
            s[8].push(b.client_cpu * 1000.0);
            s[9].push(d.flows as f64 / b.agent_cpu.max(b.client_cpu));
            if gaps > 0 || d.stderr_lost > 0 || unaccounted != 0 || d.repeats > 0 {
                let said: Vec<&String> = b
                    .stderr
                    .iter()
                    .filter(|l| {
                        l.contains("lost") || l.contains("missing") || l.contains("not printed")
                    })
                    .take(4)
                    .collect();
                notes.push(format!(
                    "{name}, round {}: gap records {:?}, {} lost said on stderr, {} received \
                     but not printed, {} repeated lines; stderr said: {}.",
                    round + 1,
                    d.gaps,
                    d.stderr_lost,
                    d.unprinted,
                    d.repeats,
                    if said.is_empty() {
                        "nothing about losses".to_string()
                    } else {
                        said.iter()
                            .map(|l| format!("`{l}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
        }
    }
    notes.push(
        "Aim: >= 200k new flows/s end to end; every loss shown (kernel ring included): \
         `unaccounted` (sent − delivered − lost in gap records) should be 0, and the losses \
         said on stderr should equal the gap records. Gap records count every lost event, the \
         few flows of the node's ICMP replies and IPv6 neighbour discovery included, so with \
         losses `unaccounted` can be a little below 0."
            .into(),
    );
    Ok(Section {
        title: format!("New flows delivered kernel → client ({count}-flow burst)"),
        method: format!(
            "An agent in the node namespace attached to a pod's veth (flow map 131072) and \
             `kubectl-orb8 trace network -o json` against it; once the client prints a marker \
             flow (its stream is open), the pod sends one UDP datagram to each of {count} \
             distinct flows (two sockets × {} ports), unpaced. Flows/s: burst flows the client \
             printed ÷ seconds from the first datagram to the last burst line. Lost: the \
             `gap` records of its output, and the losses its stderr lines say. The client is \
             stopped with SIGINT once the burst is accounted for or its output stops for 2 s. \
             {} rounds, variants interleaved. `sent flows/s` and `send s` are the sender's \
             own rate and time: where delivered flows/s is close to the sent rate, the sender \
             (one thread, one syscall per flow) is what limits the number, not orb8. The \
             `BPF_PROG_TEST_RUN` row takes the network stack out: the same {count} flows' \
             frames (pod to node, UDP) are run through the agent's own loaded \
             `orb8_tc_ingress` program by the kernel's test runner, one call per frame, so the \
             kernel program, ring buffer, agent and client are what is measured. `agent CPU \
             ms` and `client CPU ms`: what each process used (user + system, /proc/PID/stat, \
             10 ms ticks) from the stream's opening to the burst's end; `flows/s per CPU` is \
             the delivered flows over the larger of the two, the rate the pipeline would \
             keep with a CPU for each of them (on 2 vCPUs the sender, the agent and the client \
             share two).",
            count.div_ceil(2),
            ctx.rounds
        ),
        columns: vec![
            "new flows/s".into(),
            "sent flows/s".into(),
            "delivered".into(),
            "lost (gap records)".into(),
            "lost (stderr)".into(),
            "unaccounted".into(),
            "send s".into(),
            "agent CPU ms".into(),
            "client CPU ms".into(),
            "flows/s per CPU".into(),
        ],
        base: None,
        rows: variants
            .into_iter()
            .zip(samples)
            .map(|((name, bin, extra, source), values)| Row {
                name,
                values,
                command: format!(
                    "ip netns exec NODE {} serve --listen 127.0.0.1:0 --flow-map-size 131072 \
                     {}-i VETH & ip netns exec NODE {} --agent ADDR --token T trace network -o \
                     json; {count} UDP flows {}",
                    bin.display(),
                    extra.iter().map(|e| format!("{e} ")).collect::<String>(),
                    ctx.bin("kubectl-orb8").display(),
                    match source {
                        Source::Datagrams => "from POD",
                        Source::TestRun =>
                            "run through the agent's orb8_tc_ingress by BPF_PROG_TEST_RUN",
                    }
                ),
            })
            .collect(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_reports_the_receivers_rate_or_its_error() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":9.5e9},
                    "sum_received":{"bits_per_second":9.4e9}}}"#;
        assert_eq!(iperf3_bps(ok).unwrap(), 9.4e9);
        let err = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;
        assert!(
            iperf3_bps(err)
                .unwrap_err()
                .to_string()
                .contains("unable to connect")
        );
        assert!(iperf3_bps("").is_err());
    }

    #[test]
    fn tcpdump_says_what_it_captured_and_dropped() {
        let said = [
            "tcpdump: listening on o8v1x2, link-type EN10MB (Ethernet), snapshot length 96 bytes",
            "153204 packets captured",
            "153210 packets received by filter",
            "6 packets dropped by kernel",
        ]
        .map(String::from);
        assert_eq!(tcpdump_counts(&said), Some((153204, 6)));
        assert_eq!(tcpdump_counts(&said[..2]), None);
        let mut c = Captured::default();
        c.add(&said);
        c.add(&said);
        c.add(&[]);
        assert_eq!(c.0, Some((306408, 12)));
        assert_eq!(Captured::default().note("bare"), None);
    }

    #[test]
    fn counts_are_read_from_stderr_lines() {
        assert_eq!(
            count_in("orb8: warning: o8n1x0: 1234 events lost (kernel stage, ringbuf_full)"),
            1234
        );
        assert_eq!(
            count_in(
                "orb8: warning: 7 flow events received but not printed: still in the merge when \
                 the trace stopped"
            ),
            7
        );
    }

    #[test]
    fn a_burst_is_its_distinct_flows_and_every_loss_said() {
        let flow = |sport: u32, dport: u32, src: &str, proto: &str| {
            format!(
                r#"{{"event":"new_flow","time":"t","seq":1,"node":"n","protocol":"{proto}","src":"{src}","src_port":{sport},"dst":"10.77.1.1","dst_port":{dport}}}"#
            )
        };
        let out = vec![
            flow(40000, 1, "10.77.1.2", "udp"),
            flow(40001, 1, "10.77.1.2", "udp"),
            flow(40000, 1, "10.77.1.2", "udp"),
            // Not the burst: another source, ICMP, the marker's port.
            flow(40000, 2, "10.77.9.2", "udp"),
            flow(0, 0, "10.77.1.2", "icmp"),
            flow(40002, MARKER_PORT as u32, "10.77.1.2", "udp"),
            r#"{"event":"gap","node":"n","lost":5,"stage":"kernel","reason":"ringbuf_full"}"#
                .into(),
            r#"{"event":"gap","node":"n","lost":2,"stage":"kernel","reason":"ringbuf_full"}"#
                .into(),
            "not json".into(),
        ];
        let err = vec![
            "orb8: warning: n: 5 events lost (kernel stage, ringbuf_full)".to_string(),
            "orb8: warning: n: 2 events lost (kernel stage, ringbuf_full)".into(),
            "orb8: warning: 3 flow events received but not printed: still in the merge".into(),
        ];
        let d = delivered(&out, &err, "10.77.1.2", 4);
        assert_eq!(
            d,
            Delivered {
                flows: 2,
                repeats: 1,
                gaps: BTreeMap::from([("kernel/ringbuf_full".into(), 7)]),
                stderr_lost: 7,
                unprinted: 3,
                last: Some(2),
            }
        );
    }
}
