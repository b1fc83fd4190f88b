//! Privileged end-to-end: the `kubectl-orb8` binary with real agents in network namespaces the
//! tests create: `--local` (the client starts the agent in the node namespace) and two
//! `--agent` addresses (agents of two "nodes" on unix sockets, merged).

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use orb8_testkit::*;
use serde_json::Value;

mod serve_agent;
use serve_agent::ServeAgent;

/// Starts `kubectl-orb8 ARGS` inside `ns` with stdout captured.
fn client_in(ns: &NetNs, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(workspace_bin("kubectl-orb8"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8")
}

fn flow<'a>(
    flows: &'a [Value],
    iface: &str,
    dir: &str,
    proto: &str,
    src: &str,
    dst: &str,
) -> &'a Value {
    let found: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["interface"] == iface
                && f["interface_direction"] == dir
                && f["protocol"] == proto
                && f["src"] == src
                && f["dst"] == dst
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {proto} {src} -> {dst} {dir} on {iface} in {flows:#?}"
    );
    found[0]
}

#[test]
fn privileged_flows_local_json_has_exact_counts() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let client = client_in(
        &topo.node,
        &[
            "flows",
            "--local",
            "--by",
            "connection",
            "-o",
            "json",
            "--duration",
            "6s",
        ],
    );
    wait_attached(&topo.node, &a.host_if);
    wait_attached(&topo.node, &b.host_if);

    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 40);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        40,
        250,
    );
    assert_eq!(rx.join().unwrap(), 40);
    let cap = capture_tcp(&topo.node, &a.host_if, 6000);
    tcp_exchange(&a.ns, &b.ns, &b.ip4, 6000, 10, 100);
    let (to_node, from_node) = cap.join().unwrap();

    let flows: Vec<Value> =
        serde_json::from_str(&client_stdout(client)).expect("one JSON document");
    let udp = flow(&flows, &a.host_if, "ingress", "udp", &a.ip4, &b.ip4);
    assert_eq!(counts(udp), (40, 40 * (250 + 28)));
    // Ingress on A's veth is what A sent: its direction is egress.
    assert_eq!(
        (udp["direction"].as_str(), udp["interface_role"].as_str()),
        (Some("egress"), Some("veth"))
    );
    assert_eq!(
        flow(&flows, &b.host_if, "egress", "udp", &a.ip4, &b.ip4)["direction"],
        "ingress"
    );
    assert_eq!(
        (udp["src_port"].as_u64(), udp["dst_port"].as_u64()),
        (Some(40000), Some(5000))
    );
    assert_eq!(
        counts(flow(&flows, &b.host_if, "egress", "udp", &a.ip4, &b.ip4)),
        (40, 40 * 278)
    );
    assert_eq!(to_node.payload, 1000);
    let tcp = flow(&flows, &a.host_if, "ingress", "tcp", &a.ip4, &b.ip4);
    assert_eq!(counts(tcp), (to_node.packets, to_node.bytes));
    assert_eq!(tcp["tcp_flags"], "FSP.");
    let back = flow(&flows, &a.host_if, "egress", "tcp", &b.ip4, &a.ip4);
    assert_eq!(counts(back), (from_node.packets, from_node.bytes));
    for f in [udp, tcp] {
        let first = f["first_seen"].as_str().unwrap();
        assert!(
            first.ends_with('Z') && first.contains('T'),
            "RFC 3339: {first}"
        );
        assert!(f["node"].as_str().is_some_and(|n| !n.is_empty()));
    }
    // Sorted by bytes, largest first.
    let bytes: Vec<u64> = flows.iter().map(|f| f["bytes"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{bytes:?}");
}

#[test]
fn privileged_trace_network_local_prints_one_line_per_new_flow() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    let mut client = client_in(
        &topo.node,
        &[
            "trace",
            "network",
            "--local",
            "-o",
            "json",
            "--duration",
            "8s",
            "--protocol",
            "udp",
        ],
    );
    let (tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = client.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // The stream opens after the probes attach: send distinct warm-up datagrams (port 4999)
    // until the trace shows one, so the flows we count are sent while it is listening.
    let mut lines: Vec<Value> = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    let mut sport = 41000u16;
    while !lines.iter().any(|l| l["dst_port"] == 4999) {
        assert!(Instant::now() < end, "the trace never showed a flow");
        udp_send(
            &a.ns,
            &format!("{}:{sport}", a.ip4),
            &format!("{}:4999", b.ip4),
            1,
            8,
        );
        sport += 1;
        while let Ok(l) = lines_rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(serde_json::from_str(&l).expect("NDJSON line"));
        }
    }
    // Three destinations, five datagrams each: three flows on each veth, however many packets.
    for port in [5001u16, 5002, 5003] {
        let rx = udp_receiver(&b.ns, &format!("{}:{port}", b.ip4), 5);
        udp_send(
            &a.ns,
            &format!("{}:40100", a.ip4),
            &format!("{}:{port}", b.ip4),
            5,
            64,
        );
        assert_eq!(rx.join().unwrap(), 5);
    }
    let status = client.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "kubectl-orb8 trace failed: {status}");
    while let Ok(l) = lines_rx.try_recv() {
        lines.push(serde_json::from_str(&l).expect("NDJSON line"));
    }
    let out = format!("{lines:#?}");
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["src"] == a.ip4.as_str() && l["dst_port"] != 4999)
        .collect();
    let mut got: Vec<(String, String, u64)> = ours
        .iter()
        .map(|l| {
            (
                l["interface"].as_str().unwrap().to_string(),
                l["interface_direction"].as_str().unwrap().to_string(),
                l["dst_port"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = Vec::new();
    for port in [5001, 5002, 5003] {
        want.push((a.host_if.clone(), "ingress".to_string(), port));
        want.push((b.host_if.clone(), "egress".to_string(), port));
    }
    want.sort();
    assert_eq!(got, want, "{out}");
    for l in &ours {
        assert_eq!(l["protocol"], "udp");
        // New-flow events carry the role too: on A's veth A sent, on B's B received.
        let pods_word = if l["interface"] == a.host_if.as_str() {
            "egress"
        } else {
            "ingress"
        };
        assert_eq!(
            (l["interface_role"].as_str(), l["direction"].as_str()),
            (Some("veth"), Some(pods_word)),
            "{l:#}"
        );
        assert_eq!(
            counts(l),
            (1, 64 + 28),
            "a new-flow event carries its first packet"
        );
    }
    assert!(
        lines.iter().all(|l| l["protocol"] == "udp"),
        "--protocol udp filters: {out}"
    );
}

#[test]
fn privileged_two_agents_merge_into_one_table() {
    require_root();
    let token = "e2e-token-0123456789abcdef0123";
    let (n1, n2) = (Topology::new(2), Topology::new(2));
    let a1 = ServeAgent::start(&n1.node, "node-one", token);
    let a2 = ServeAgent::start(&n2.node, "node-two", token);
    // Each node's pods talk; the same addresses exist on both nodes, in different namespaces.
    for (t, count) in [(&n1, 7usize), (&n2, 9)] {
        let (a, b) = (&t.pods[0], &t.pods[1]);
        let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), count);
        udp_send(
            &a.ns,
            &format!("{}:40000", a.ip4),
            &format!("{}:5000", b.ip4),
            count,
            100,
        );
        assert_eq!(rx.join().unwrap(), count);
    }
    let out = Command::new(workspace_bin("kubectl-orb8"))
        .args([
            "--agent",
            &format!("unix:{}", a1.socket),
            "--agent",
            &format!("unix:{}", a2.socket),
        ])
        .args([
            "--token",
            token,
            "flows",
            "-o",
            "json",
            "--duration",
            "1s",
            "--protocol",
            "udp",
            "--port",
            "5000",
        ])
        .output()
        .expect("running kubectl-orb8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let mut got: Vec<(String, String, u64)> = flows
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap().to_string(),
                f["direction"].as_str().unwrap().to_string(),
                f["packets"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let want = vec![
        ("node-one".to_string(), "egress".to_string(), 7),
        ("node-one".to_string(), "ingress".to_string(), 7),
        ("node-two".to_string(), "egress".to_string(), 9),
        ("node-two".to_string(), "ingress".to_string(), 9),
    ];
    assert_eq!(got, want, "{flows:#?}");
    let total: u64 = flows.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 2 * (7 + 9) * 128);
}

#[test]
fn privileged_readme_run_command_works() {
    require_root();
    // The README's first command block ends with the command that runs orb8; run the same
    // client arguments (shortened) in a namespace of our own.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let run_line = readme
        .lines()
        .find(|l| l.starts_with("bash scripts/setup.sh") && l.contains("kubectl-orb8"))
        .expect("README's run command");
    let args: Vec<&str> = run_line
        .split("kubectl-orb8")
        .nth(1)
        .expect("kubectl-orb8 arguments")
        .split_whitespace()
        .collect();
    assert!(
        args.contains(&"--local"),
        "README runs local mode: {run_line}"
    );
    let topo = Topology::new(1);
    let mut all = args.clone();
    all.extend(["--duration", "2s"]);
    let mut child = client_in(&topo.node, &all);
    wait_attached(&topo.node, &topo.pods[0].host_if);
    topo.pods[0]
        .ns
        .exec(&["ping", "-q", "-c", "2", "-i", "0.1", "10.77.1.1"]);
    let out = child.stdout.take().map(|mut s| {
        let mut v = String::new();
        std::io::Read::read_to_string(&mut s, &mut v).unwrap();
        v
    });
    let status = child.wait().unwrap();
    assert!(status.success());
    let out = out.unwrap();
    assert!(out.contains("icmp") && out.contains("10.77.1.2"), "{out}");
}

#[test]
fn privileged_serve_detaches_on_sigterm_and_refuses_wrong_tokens() {
    require_root();
    let token = "e2e-token-abcdef0123456789abcd";
    let topo = Topology::new(1);
    let iface = topo.pods[0].host_if.clone();
    let mut agent = ServeAgent::start(&topo.node, "node-x", token);
    wait_attached(&topo.node, &iface);
    let out = Command::new(workspace_bin("kubectl-orb8"))
        .args([
            "--agent",
            &format!("unix:{}", agent.socket),
            "--token",
            "not-the-session-token-at-all",
            "status",
        ])
        .output()
        .expect("running kubectl-orb8");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rejected the token"), "{err}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let status = agent.child.wait().expect("waiting for the agent");
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert_eq!(
        tcx_programs(&topo.node, &iface),
        Vec::<String>::new(),
        "probes detached"
    );
    assert!(
        !std::path::Path::new(&agent.socket).exists(),
        "socket removed"
    );
}

#[test]
fn privileged_local_flows_name_the_process_and_container_behind_a_veth() {
    require_root();
    let topo = Topology::new(2);
    let (a, b) = (&topo.pods[0], &topo.pods[1]);
    // A "container" in pod A: a process in A's network namespace, in a cgroup laid out as
    // containerd with the systemd driver lays it out.
    let uid = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let id = "cd".repeat(32);
    let cg = TestCgroup::nested(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    ));
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &a.ns.name, "sleep", "60"])
        .spawn()
        .expect("spawning sleep in pod A");
    // `ip netns exec` execs sleep in place: the child is the sleep itself.
    cg.add(sleeper.id());
    let client = client_in(
        &topo.node,
        &[
            "flows",
            "--local",
            "--by",
            "connection",
            "-o",
            "json",
            "--duration",
            "5s",
        ],
    );
    // Both veths the datagrams cross must be attached before they are sent.
    wait_attached(&topo.node, &a.host_if);
    wait_attached(&topo.node, &b.host_if);
    // No wait for the agent's peer scan: the process behind a veth is joined to the flows when
    // they are read, at the end of --duration, and the scan (every second) has run by then; if
    // it had not, the assertions on `process` below fail.
    let rx = udp_receiver(&b.ns, &format!("{}:5000", b.ip4), 10);
    udp_send(
        &a.ns,
        &format!("{}:40000", a.ip4),
        &format!("{}:5000", b.ip4),
        10,
        100,
    );
    assert_eq!(rx.join().unwrap(), 10);
    let flows: Vec<Value> =
        serde_json::from_str(&client_stdout(client)).expect("one JSON document");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let f = flow(&flows, &a.host_if, "ingress", "udp", &a.ip4, &b.ip4);
    assert_eq!(counts(f), (10, 1280));
    assert_eq!(f["process"], format!("sleep[{}]", sleeper.id()));
    assert_eq!(f["container_id"], id.as_str());
    assert!(
        f["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(&format!("cri-containerd-{id}.scope")),
        "{f:#}"
    );
    // B's namespace has no process: its veth's flows carry no owner.
    let fb = flow(&flows, &b.host_if, "egress", "udp", &a.ip4, &b.ip4);
    assert!(fb.get("process").is_none(), "{fb:#}");
}
