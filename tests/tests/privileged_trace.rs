//! Privileged end-to-end: `trace network` against a running agent (`orb8-agent serve` in a node
//! namespace the test creates) shows every flow active during the trace exactly once: flows
//! that began before it (a UDP flow still sending, a TCP connection idle the whole time) as
//! `active_flow`, flows that begin during it as `new_flow`, and flows created while the trace is
//! starting once, either way. Traffic only between the test's pod namespaces.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use orb8_testkit::*;
use serde_json::Value;

mod serve_agent;
use serve_agent::ServeAgent;

const TOKEN: &str = "e2e-token-trace0123456789abcdef";

/// What identifies a printed flow: event, interface, the interface's direction, protocol, src,
/// src port, dst, dst port.
type Seen = (String, String, String, String, String, u64, String, u64);

fn seen(l: &Value) -> Seen {
    let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| l[k].as_u64().unwrap_or(0);
    (
        s("event"),
        s("interface"),
        s("interface_direction"),
        s("protocol"),
        s("src"),
        n("src_port"),
        s("dst"),
        n("dst_port"),
    )
}

/// A running `kubectl-orb8 trace network -o json` against `agent`, its lines read on a thread.
struct Trace {
    child: std::process::Child,
    lines: mpsc::Receiver<Value>,
    got: Vec<Value>,
}

impl Trace {
    fn start(agent: &ServeAgent, duration: &str) -> Trace {
        let mut child = Command::new(workspace_bin("kubectl-orb8"))
            .args(["--agent", &format!("unix:{}", agent.socket)])
            .args(["--token", TOKEN, "trace", "network", "-o", "json"])
            .args(["--duration", duration])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning kubectl-orb8");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad NDJSON line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Trace {
            child,
            lines,
            got: Vec::new(),
        }
    }

    /// Waits for a line satisfying `pred`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        if self.got.iter().any(&pred) {
            return;
        }
        while Instant::now() < end {
            if let Ok(v) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let hit = pred(&v);
                self.got.push(v);
                if hit {
                    return;
                }
            }
        }
        panic!("the trace never showed {what}: {:#?}", self.got);
    }

    /// Waits for the trace to end (its `--duration`) and returns every line.
    fn finish(mut self) -> Vec<Value> {
        let status = self.child.wait().expect("waiting for kubectl-orb8");
        assert!(status.success(), "kubectl-orb8 trace failed: {status}");
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.got.push(v);
        }
        self.got
    }
}

/// Sends a datagram from a fresh source port (from `first_port` on) to `dst` every 0.5 ms, inside `ns`,
/// until `stop`; returns once 25 are sent, its handle giving the ports used.
fn churn(
    ns: &NetNs,
    src_ip: &str,
    first_port: u16,
    dst: &str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<u16>> {
    let (src_ip, dst) = (src_ip.to_string(), dst.to_string());
    spawn_in(ns, move |ready| {
        let mut ports = Vec::new();
        let mut port = first_port;
        while !stop.load(Ordering::Relaxed) {
            if ports.len() == 25 {
                ready.send(()).expect("ready");
            }
            let s = UdpSocket::bind((src_ip.as_str(), port))
                .unwrap_or_else(|e| panic!("bind {src_ip}:{port}: {e}"));
            s.send_to(b"churn", &dst)
                .unwrap_or_else(|e| panic!("send to {dst}: {e}"));
            ports.push(port);
            port += 1;
            thread::sleep(Duration::from_micros(500));
        }
        ports
    })
}

#[test]
fn privileged_trace_network_shows_every_active_flow_once() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let agent = ServeAgent::start(&topo.node, "node-t", TOKEN);
    wait_attached(&topo.node, &a.host_if);
    wait_attached(&topo.node, &b.host_if);

    // Before any trace: a TCP connection that exchanges one message each way, then stays idle.
    let b_ip = b.ip4.clone();
    let listener =
        b.ns.run_in(move || TcpListener::bind((b_ip.as_str(), 6100)).expect("listen"));
    let b_ip = b.ip4.clone();
    let mut client =
        a.ns.run_in(move || TcpStream::connect((b_ip.as_str(), 6100)).expect("connect"));
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    let cport = client.local_addr().unwrap().port() as u64;

    // Before any trace, and on all the time: a UDP flow, one datagram every 10 ms (received, so
    // no ICMP comes back).
    let b_ip = b.ip4.clone();
    let sinks: Vec<UdpSocket> = [5100u16, 5200, 5300]
        .into_iter()
        .map(|port| {
            let ip = b_ip.clone();
            b.ns.run_in(move || UdpSocket::bind((ip.as_str(), port)).expect("bind sink"))
        })
        .collect();
    let steady_stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (stop, src, dst) = (
            steady_stop.clone(),
            format!("{}:41500", a.ip4),
            format!("{}:5100", b.ip4),
        );
        spawn_in(&a.ns, move |ready| {
            let s = UdpSocket::bind(&src).expect("bind steady");
            ready.send(()).expect("ready");
            while !stop.load(Ordering::Relaxed) {
                s.send_to(b"steady", &dst).expect("send steady");
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let steady_line = |l: &Value| l["src_port"] == 41500 && l["interface"] == a.host_if.as_str();
    // The steady flow is in the agent's table before the first trace starts.
    {
        let mut t = Trace::start(&agent, "20s");
        t.wait_for("the steady flow", steady_line);
        let _ = t.child.kill();
        let _ = t.child.wait();
    }

    // A regression to streaming only new flows fails every round; a missing de-duplication of
    // flows created while the trace subscribes fails in most.
    let mut all_churned: Vec<u16> = Vec::new();
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let churner = churn(
            &a.ns,
            &a.ip4,
            42000 + 2000 * round as u16,
            &format!("{}:5300", b.ip4),
            stop.clone(),
        );
        let mut t = Trace::start(&agent, "5s");
        t.wait_for("the steady flow", steady_line);
        // The stream is open: a flow that starts now is new.
        let new_port = 41600 + round as u16;
        udp_send(
            &a.ns,
            &format!("{}:{new_port}", a.ip4),
            &format!("{}:5200", b.ip4),
            3,
            8,
        );
        t.wait_for("the new flow", |l| {
            l["src_port"] == new_port as u64 && l["interface"] == a.host_if.as_str()
        });
        stop.store(true, Ordering::Relaxed);
        let churned = churner.join().expect("churn");
        all_churned.extend(&churned);
        let lines = t.finish();
        let out = format!("round {round}: {lines:#?}");
        assert!(
            lines.iter().all(|l| l["event"] != "gap"),
            "nothing may be lost: {out}"
        );
        let mut count: BTreeMap<Seen, u64> = BTreeMap::new();
        for l in lines.iter().filter(|l| {
            let src = l["src"].as_str().unwrap_or("");
            src == a.ip4 || src == b.ip4
        }) {
            *count.entry(seen(l)).or_default() += 1;
        }
        let key =
            |event: &str, on: &Pod, dir: &str, proto: &str, s: (&Pod, u64), d: (&Pod, u64)| {
                (
                    event.to_string(),
                    on.host_if.clone(),
                    dir.to_string(),
                    proto.to_string(),
                    s.0.ip4.clone(),
                    s.1,
                    d.0.ip4.clone(),
                    d.1,
                )
            };
        // Each flow on each veth it crosses: ingress on the sender's host end, egress on the
        // receiver's.
        let mut want: BTreeMap<Seen, u64> = BTreeMap::new();
        for (event, proto, s, d) in [
            ("active_flow", "udp", (a, 41500), (b, 5100)),
            ("active_flow", "tcp", (a, cport), (b, 6100)),
            ("active_flow", "tcp", (b, 6100), (a, cport)),
            ("new_flow", "udp", (a, new_port as u64), (b, 5200)),
        ]
        .into_iter()
        .chain((0..round).map(|r| ("active_flow", "udp", (a, 41600 + r), (b, 5200))))
        {
            want.insert(key(event, s.0, "ingress", proto, s, d), 1);
            want.insert(key(event, d.0, "egress", proto, s, d), 1);
        }
        // Churned flows (this round's and the earlier ones'): once each per veth, as active or
        // new, whichever side of the opening they fell on.
        let mut churn_got: BTreeMap<(String, String, u64), u64> = BTreeMap::new();
        count.retain(|k, n| {
            if k.7 != 5300 {
                return true;
            }
            *churn_got
                .entry((k.1.clone(), k.2.clone(), k.5))
                .or_default() += *n;
            false
        });
        assert_eq!(count, want, "{out}");
        let mut churn_want = BTreeMap::new();
        for p in &all_churned {
            churn_want.insert((a.host_if.clone(), "ingress".to_string(), *p as u64), 1);
            churn_want.insert((b.host_if.clone(), "egress".to_string(), *p as u64), 1);
        }
        assert_eq!(churn_got, churn_want, "{out}");
        let active = |p: u16| {
            lines.iter().any(|l| {
                l["event"] == "active_flow" && l["dst_port"] == 5300 && l["src_port"] == p as u64
            })
        };
        assert!(
            churned[..25].iter().all(|p| active(*p)),
            "flows from before the trace are active: {out}"
        );
        eprintln!(
            "round {round}: {} churned flows, {} shown as active",
            churned.len(),
            churned.iter().filter(|p| active(**p)).count()
        );
        // Already-active flows carry their counts so far; a new flow its first packet.
        for l in &lines {
            if l["event"] == "new_flow" && l["src_port"] == new_port as u64 {
                assert_eq!(counts(l), (1, 28 + 8), "{l:#}");
            }
            if l["event"] == "active_flow" && l["dst_port"] == 6100 {
                assert!(
                    l["tcp_flags"].as_str().unwrap_or("").contains('S'),
                    "the connection's SYN was before the trace: {l:#}"
                );
            }
        }
    }
    steady_stop.store(true, Ordering::Relaxed);
    steady.join().expect("steady sender");
    drop((client, server, listener, sinks));
}
