//! The cluster suite: what an on-call engineer runs, against a whole cluster, checked by
//! exact facts. It runs against the cluster `ORB8_E2E_KUBECONFIG` names (kind, k3d, ...;
//! `ORB8_E2E_IMAGE` is then an agent image its nodes can pull), and otherwise, as root,
//! against the project's own fake cluster (`orb8_testkit::fake_cluster`: a fake API server and
//! a fake kubelet that runs the real agent and busybox workloads in network namespaces and
//! cgroups of their own), which is how CI runs it. Not root and no cluster: each test says
//! `SKIPPED` on stderr and does nothing.
//!
//! Each test is isolated: its own random id, its own namespaces (labelled `orb8-e2e=<id>`,
//! removed by a guard even when the test fails), its own agent sessions (`--session`), and it
//! counts only its own sessions' agent pods. Workloads are busybox (`ORB8_E2E_WORKLOAD_IMAGE`,
//! default `busybox:1.36`) started as `busybox sh -c SCRIPT`, so the same pods run on a real
//! node and in the fake kubelet (which runs the host's busybox). Linux only (the fake cluster
//! and the process handling are).

#![cfg(target_os = "linux")]

#[path = "cluster_e2e/harness.rs"]
mod harness;

use std::process::Stdio;

use serde_json::{Value, json};

use std::cell::RefCell;
use std::collections::BTreeSet;

use harness::{E2e, Lines, POD_START, first_line, sigint};

/// A busybox script that sleeps until the pod is deleted.
const IDLE: &str = "exec busybox sleep 3600";

#[test]
fn e2e_flows_name_both_ends_and_n_keeps_only_that_namespace() {
    let Some(mut e) = E2e::new("flows") else {
        return;
    };
    let (a, b, c) = (e.namespace("a"), e.namespace("b"), e.namespace("c"));
    let server = e.pod(&a, "server", IDLE);
    e.pod(&b, "client", &format!("exec busybox ping -i 0.2 {server}"));
    // A negative control: two pods of a namespace that is not selected talk the same way.
    let quiet = e.pod(&c, "quiet", IDLE);
    let chatter = e.pod(&c, "chatter", &format!("exec busybox ping -i 0.2 {quiet}"));
    let session = e.session("f");
    let out = e.orb8_ok(
        &session,
        &[
            "-n",
            &a,
            "flows",
            "--by",
            "connection",
            "-o",
            "json",
            "--duration",
            "4s",
        ],
    );
    let flows: Vec<Value> = serde_json::from_str(&out).expect("JSON flows");
    let (client, server_name) = (format!("{b}/client"), format!("{a}/server"));
    // Seen from the server's own veth only: the requests it received, the replies it sent.
    let named = |src: &str, dst: &str, direction: &str| {
        flows.iter().any(|f| {
            f["protocol"] == "icmp"
                && f["src_name"] == src
                && f["dst_name"] == dst
                && f["direction"] == direction
                && f["packets"].as_u64() > Some(0)
        })
    };
    assert!(
        named(&client, &server_name, "ingress") && named(&server_name, &client, "egress"),
        "no ICMP flows {client} <-> {server_name} named in {flows:#?}"
    );
    for f in &flows {
        assert_eq!(
            (f["pod"].as_str(), f["interface_role"].as_str()),
            (Some(server_name.as_str()), Some("veth")),
            "-n {a} printed a flow not seen at {server_name}'s own veth: {f:#}"
        );
        for end in ["src", "dst"] {
            assert!(
                f[end] != quiet.as_str() && f[end] != chatter.as_str(),
                "-n {a} printed the unselected namespace's traffic: {f:#}"
            );
        }
    }
    assert_eq!(
        e.session_pods(&session),
        Vec::<String>::new(),
        "agent pods left behind"
    );
}

#[test]
fn e2e_trace_syscall_pod_counts_exactly_the_calls_it_made() {
    let Some(mut e) = E2e::new("trace-syscall") else {
        return;
    };
    let t = e.namespace("t");
    // Waits for one connection on 7000 (greeting it), and when it closes makes exactly 37
    // kill(2) calls (ash's builtin `kill` is one syscall each), then idles.
    e.pod(
        &t,
        "target",
        "echo ready | busybox nc -l -p 7000 >/dev/null; i=0; \
         while [ $i -lt 37 ]; do kill -0 $$; i=$((i+1)); done; exec busybox sleep 3600",
    );
    let session = e.session("s");
    let mut child = e
        .orb8(
            &session,
            &[
                "-n",
                &t,
                "trace",
                "syscall",
                "target",
                "--syscall",
                "kill",
                "--duration",
                "8s",
                "-o",
                "json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut stderr = Lines::of(&mut child);
    stderr.wait_for("'orb8: tracing' line", POD_START, |l| {
        l.starts_with("orb8: tracing")
    });
    e.poke(&t, "target", 7000);
    let out = child.wait_with_output().expect("waiting for the trace");
    let stderr = stderr.rest();
    assert!(out.status.success(), "trace syscall failed: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON summary: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let rows = summary["syscalls"].as_array().expect("syscalls rows");
    let kill: Vec<&Value> = rows.iter().filter(|r| r["syscall"] == "kill").collect();
    assert_eq!(kill.len(), 1, "one kill row in {summary:#}");
    assert_eq!(kill[0]["calls"], 37, "{summary:#}");
    assert_eq!(kill[0]["errors"], 0, "{summary:#}");
    assert_eq!(
        rows.len(),
        1,
        "--syscall kill counted other syscalls: {summary:#}"
    );
    assert_eq!(e.session_pods(&session), Vec::<String>::new());
}

/// A pod that keeps opening new TCP connections to `server` port 7001 (nothing listens: each
/// attempt is a new flow, answered with a reset).
fn caller_script(server: &str) -> String {
    format!("while :; do busybox nc -w 1 {server} 7001 </dev/null; busybox sleep 0.3; done")
}

#[test]
fn e2e_ctrl_c_mid_stream_deletes_the_agents() {
    let Some(mut e) = E2e::new("ctrl-c") else {
        return;
    };
    let n = e.namespace("i");
    let server = e.pod(&n, "server", IDLE);
    e.pod(&n, "caller", &caller_script(&server));
    let session = e.session("i");
    let mut child = e
        .orb8(
            &session,
            &["-v", "-n", &n, "trace", "network", "-o", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let stderr = Lines::of(&mut child);
    let line = first_line(&mut child, POD_START);
    let flow: Value = serde_json::from_str(&line).expect("a JSON flow line");
    let ends = [flow["src_name"].clone(), flow["dst_name"].clone()];
    assert!(
        ends.contains(&json!(format!("{n}/caller")))
            && ends.contains(&json!(format!("{n}/server"))),
        "the first flow does not name both pods: {flow:#}"
    );
    assert!(
        !e.session_pods(&session).is_empty(),
        "no agent pod while streaming"
    );
    sigint(&child);
    let status = child.wait().expect("waiting for kubectl-orb8");
    let stderr = stderr.rest();
    assert!(
        status.success() || status.code() == Some(130),
        "{status}: {stderr}"
    );
    // How long the first line took, step by step (`-v`), for whoever reads the test's output.
    for line in stderr.lines().filter(|l| l.contains("first answer")) {
        harness::say(&format!("ctrl-c: {line}"));
    }
    assert_eq!(
        e.session_pods(&session),
        Vec::<String>::new(),
        "Ctrl-C left agent pods"
    );
}

/// Starts `trace network -n NS` in `session`, waits for its first line, and SIGKILLs it;
/// returns the agent pods it left.
fn killed_client(e: &E2e, namespace: &str, session: &str) -> Vec<String> {
    let mut child = e
        .orb8(
            session,
            &["-n", namespace, "trace", "network", "-o", "json"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning kubectl-orb8");
    first_line(&mut child, POD_START);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping the killed client");
    let left = e.session_pods(session);
    assert!(
        !left.is_empty(),
        "the killed client's agent pods stay behind"
    );
    left
}

#[test]
fn e2e_killed_client_leaves_pods_that_cleanup_removes() {
    let Some(mut e) = E2e::new("killed") else {
        return;
    };
    let n = e.namespace("k");
    let server = e.pod(&n, "server", IDLE);
    e.pod(&n, "caller", &caller_script(&server));
    let (first, second) = (e.session("k1"), e.session("k2"));
    let left = killed_client(&e, &n, &first);
    let other = killed_client(&e, &n, &second);
    let listed = e.orb8_ok(&first, &["cleanup", "--dry-run", "-o", "json"]);
    let items: Vec<Value> = serde_json::from_str(&listed).expect("JSON list");
    let names: Vec<&str> = items.iter().filter_map(|i| i["pod"].as_str()).collect();
    assert_eq!(
        names, left,
        "cleanup --session lists exactly the session's pods"
    );
    assert!(
        items.iter().all(|i| i["action"] == "would delete"),
        "{items:#?}"
    );
    assert_eq!(e.session_pods(&first), left, "--dry-run deleted something");
    e.orb8_ok(&first, &["cleanup"]);
    assert_eq!(
        e.session_pods(&first),
        Vec::<String>::new(),
        "cleanup left agent pods"
    );
    assert_eq!(
        e.session_pods(&second),
        other,
        "cleanup --session deleted another session's pods"
    );
    e.orb8_ok(&second, &["cleanup"]);
    assert_eq!(e.session_pods(&second), Vec::<String>::new());
}

/// UDP datagrams the sender sends per poke, and the IP length of each.
const DATAGRAMS: u64 = 7;
const DATAGRAM_BYTES: u64 = 120;

/// A pod that, each time it is poked on 7000, sends exactly [`DATAGRAMS`] UDP datagrams of
/// [`DATAGRAM_BYTES`] IP bytes to `dst` (traceroute probes from one socket, to ports 7002
/// upward, with TTL 64 so that they reach `dst` however the node routes; `dst` answers each
/// with an ICMP port unreachable).
fn udp_sender(dst: &str) -> String {
    format!(
        "while :; do echo ready | busybox nc -l -p 7000 >/dev/null; \
         busybox traceroute -n -f 64 -m 64 -q {DATAGRAMS} -w 1 -p 7002 {dst} {DATAGRAM_BYTES} \
         >/dev/null 2>&1; done"
    )
}

/// Waits until `-v` said that the agents of every one of `nodes` are ready.
fn wait_agents_ready(stderr: &mut Lines, nodes: &[String]) {
    let left: RefCell<BTreeSet<String>> = RefCell::new(nodes.iter().cloned().collect());
    stderr.wait_for("'port-forward ready' for every node", POD_START, |l| {
        let mut left = left.borrow_mut();
        if l.contains("port-forward ready")
            && let Some(node) = l
                .strip_prefix("orb8: timing ")
                .and_then(|r| r.split(':').next())
        {
            left.remove(node);
        }
        left.is_empty()
    });
}

/// Runs `kubectl orb8 -v ARGS` (a `flows` command) in `session`, pokes `sender` once the
/// agents of `nodes` are ready, and returns its JSON output.
fn flows_around_a_poke(
    e: &E2e,
    session: &str,
    args: &[&str],
    nodes: &[String],
    sender: (&str, &str),
) -> Vec<Value> {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let mut child = e
        .orb8(session, &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut stderr = Lines::of(&mut child);
    wait_agents_ready(&mut stderr, nodes);
    e.poke(sender.0, sender.1, 7000);
    let out = child.wait_with_output().expect("waiting for flows");
    let stderr = stderr.rest();
    assert!(out.status.success(), "flows {args:?} failed: {stderr}");
    assert!(
        !stderr.contains("warning"),
        "flows {args:?} warned: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "flows {args:?}: not JSON ({err}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// (packets, bytes, connections) summed over `rows` (grouped rows count connections; flows
/// are one connection each).
fn sums<'a>(rows: impl Iterator<Item = &'a Value>) -> (u64, u64, u64) {
    rows.fold((0, 0, 0), |(p, b, c), r| {
        (
            p + r["packets"].as_u64().unwrap_or(0),
            b + r["bytes"].as_u64().unwrap_or(0),
            c + r["connections"].as_u64().unwrap_or(1),
        )
    })
}

#[test]
fn e2e_pod_to_pod_udp_is_counted_once_per_pod_end_from_its_own_veth() {
    let Some(mut e) = E2e::new("udp-once") else {
        return;
    };
    let (s, r) = (e.namespace("s"), e.namespace("r"));
    let receiver_ip = e.pod(&r, "receiver", IDLE);
    let node = e.node_of(&r, "receiver");
    e.pod_on(&s, "sender", &udp_sender(&receiver_ip), Some(&node));
    let nodes = vec![node.clone()];
    let (sender, receiver) = (format!("{s}/sender"), format!("{r}/receiver"));
    let want = (DATAGRAMS, DATAGRAMS * DATAGRAM_BYTES, DATAGRAMS);

    // -n s: the sender's end only, once, in the sender's words; grouped by peer.
    let by_namespace = e.session("n");
    let rows = flows_around_a_poke(
        &e,
        &by_namespace,
        &[
            "-n",
            &s,
            "flows",
            "-o",
            "json",
            "--protocol",
            "udp",
            "--duration",
            "3s",
        ],
        &nodes,
        (&s, "sender"),
    );
    for row in &rows {
        assert_eq!(
            (
                row["pod"].as_str(),
                row["peer"].as_str(),
                row["direction"].as_str()
            ),
            (
                Some(sender.as_str()),
                Some(receiver.as_str()),
                Some("egress")
            ),
            "-n {s} printed a row that is not the sender sending: {rows:#?}"
        );
    }
    assert_eq!(
        sums(rows.iter()),
        want,
        "{DATAGRAMS} datagrams of {DATAGRAM_BYTES} B, each counted once: {rows:#?}"
    );

    // -A, one row per flow: once at each pod end, each from its own veth, in its own words.
    let session = e.session("a");
    let flows = flows_around_a_poke(
        &e,
        &session,
        &[
            "-A",
            "flows",
            "--by",
            "connection",
            "-o",
            "json",
            "--protocol",
            "udp",
            "--duration",
            "3s",
        ],
        &nodes,
        (&s, "sender"),
    );
    let ours: Vec<&Value> = flows
        .iter()
        .filter(|f| f["src_name"] == sender.as_str() && f["dst_name"] == receiver.as_str())
        .collect();
    for f in &ours {
        assert_eq!(f["interface_role"], "veth", "seen off a veth: {f:#}");
    }
    let at = |pod: &str, direction: &str, interface_direction: &str| {
        let end: Vec<&Value> = ours.iter().copied().filter(|f| f["pod"] == pod).collect();
        assert!(
            end.iter()
                .all(|f| f["direction"] == direction
                    && f["interface_direction"] == interface_direction),
            "{pod}: expected {direction} (interface {interface_direction}): {end:#?}"
        );
        sums(end.into_iter())
    };
    assert_eq!(at(&sender, "egress", "ingress"), want, "{ours:#?}");
    assert_eq!(at(&receiver, "ingress", "egress"), want, "{ours:#?}");
    assert_eq!(ours.len() as u64, 2 * DATAGRAMS, "{ours:#?}");
    for session in [by_namespace, session] {
        assert_eq!(e.session_pods(&session), Vec::<String>::new());
    }
}

#[test]
fn e2e_trace_network_text_lines_name_both_pods() {
    let Some(mut e) = E2e::new("trace-names") else {
        return;
    };
    let (s, r) = (e.namespace("s"), e.namespace("r"));
    let receiver_ip = e.pod(&r, "receiver", IDLE);
    let node = e.node_of(&r, "receiver");
    e.pod_on(&s, "sender", &udp_sender(&receiver_ip), Some(&node));
    let session = e.session("t");
    let mut child = e
        .orb8(
            &session,
            &["-v", "-n", &s, "trace", "network", "--protocol", "udp"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut stderr = Lines::of(&mut child);
    wait_agents_ready(&mut stderr, &[node]);
    e.poke(&s, "sender", 7000);
    let line = first_line(&mut child, POD_START);
    sigint(&child);
    let status = child.wait().expect("waiting for kubectl-orb8");
    assert!(
        status.success() || status.code() == Some(130),
        "{status}: {}",
        stderr.rest()
    );
    // `~ 10:00:00.000Z node-1 vethX egress udp s/sender:PORT -> r/receiver:7002 120 B`
    assert!(
        line.contains(&format!(" egress udp {s}/sender:"))
            && line.contains(&format!(" -> {r}/receiver:"))
            && line.trim_end().ends_with(&format!(" {DATAGRAM_BYTES} B")),
        "the line does not name both pods: {line:?}"
    );
    assert_eq!(e.session_pods(&session), Vec::<String>::new());
}

#[test]
fn e2e_documented_rbac_is_enough_and_a_killed_sessions_pod_goes_with_the_next_command() {
    let Some(mut e) = E2e::new("rbac-reap") else {
        return;
    };
    let n = e.namespace("k");
    let server = e.pod(&n, "server", IDLE);
    e.pod(&n, "caller", &caller_script(&server));
    let killed = e.session("k");
    let left = killed_client(&e, &n, &killed);
    e.finish_agents(&killed, std::time::Duration::from_secs(90));
    let next = e.session("n");
    let run = || {
        e.orb8(&next, &["-n", &n, "flows", "--duration", "1s"])
            .output()
            .expect("running kubectl-orb8")
    };
    let out = match e.as_documented_user(run) {
        Some(out) => out,
        None => {
            harness::say(
                "SKIPPED e2e rbac part: a real cluster needs the roles applied and a token of a user bound by them; ran as the kubeconfig's user",
            );
            run()
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("orb8: warning"))
        .collect();
    assert_eq!(
        warnings,
        vec![format!(
            "orb8: warning: removed {} finished agent pod{} of gone session {killed} (finished over 2m ago)",
            left.len(),
            if left.len() == 1 { "" } else { "s" }
        )],
        "the documented RBAC is enough, and the killed session's pods are said to go"
    );
    assert_eq!(
        e.session_pods(&killed),
        Vec::<String>::new(),
        "the next command left the killed session's pods"
    );
    assert_eq!(e.session_pods(&next), Vec::<String>::new());
}

/// Runs `kubectl orb8 ARGS -o json` (a trace with `--duration`) in `session`, pokes `sender`
/// once stderr says `started` (the trace's header line), and returns its NDJSON records; the
/// trace must succeed and report no loss.
fn trace_around_a_poke(
    e: &E2e,
    session: &str,
    args: &[&str],
    started: &str,
    sender: (&str, &str),
) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let mut child = e
        .orb8(session, &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl-orb8");
    let mut stderr = Lines::of(&mut child);
    stderr.wait_for(started, POD_START, |l| l.starts_with(started));
    e.poke(sender.0, sender.1, 7000);
    let out = child.wait_with_output().expect("waiting for kubectl-orb8");
    let stderr = stderr.rest();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    assert!(
        !stderr.contains("lost"),
        "{args:?} reported losses: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l:?}")))
        .collect()
}

#[test]
fn e2e_trace_drops_counts_datagrams_to_a_closed_port_by_reason_and_pod() {
    let Some(mut e) = E2e::new("drops") else {
        return;
    };
    // The receiver listens on nothing: each of the sender's datagrams to it is dropped in the
    // receiver's kernel for want of a socket (NO_SOCKET), once.
    let (s, r) = (e.namespace("s"), e.namespace("r"));
    let receiver_ip = e.pod(&r, "receiver", IDLE);
    let node = e.node_of(&r, "receiver");
    e.pod_on(&s, "sender", &udp_sender(&receiver_ip), Some(&node));
    let session = e.session("d");
    let rows = trace_around_a_poke(
        &e,
        &session,
        &["-n", &r, "trace", "drops", "--summary", "--duration", "6s"],
        "orb8: tracing drops on 1 agent",
        (&s, "sender"),
    );
    let (sender, receiver) = (format!("{s}/sender"), format!("{r}/receiver"));
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|row| row["pod"] == receiver.as_str() && row["peer"] == sender.as_str())
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one row for {sender} -> {receiver}: {rows:#?}"
    );
    let row = ours[0];
    assert_eq!(row["event"], "drop_summary", "{row:#}");
    assert_eq!(row["reason"], "NO_SOCKET", "{row:#}");
    assert_eq!(
        (row["packets"].as_u64(), row["bytes"].as_u64()),
        (Some(DATAGRAMS), Some(DATAGRAMS * DATAGRAM_BYTES)),
        "{DATAGRAMS} datagrams of {DATAGRAM_BYTES} B, each dropped once: {row:#}"
    );
    assert_eq!(e.session_pods(&session), Vec::<String>::new());
}

/// A pod that, each time it is poked on 7000, opens one TCP connection to `server`:8080 (says
/// `hi`, waits for the answer, closes) and one to `server`:8081, where nothing listens.
fn tcp_client(server: &str) -> String {
    format!(
        "while :; do echo ready | busybox nc -l -p 7000 >/dev/null; \
         echo hi | busybox nc -w 2 {server} 8080 >/dev/null 2>&1; \
         busybox nc -w 2 {server} 8081 </dev/null >/dev/null 2>&1; done"
    )
}

#[test]
fn e2e_trace_tcp_names_both_pods_of_a_connection_and_a_refusal() {
    let Some(mut e) = E2e::new("tcp") else {
        return;
    };
    let (s, r) = (e.namespace("s"), e.namespace("r"));
    let server_ip = e.pod(
        &r,
        "server",
        "while :; do echo hello | busybox nc -l -p 8080 >/dev/null; done",
    );
    let node = e.node_of(&r, "server");
    e.pod_on(&s, "client", &tcp_client(&server_ip), Some(&node));
    let session = e.session("t");
    let lines = trace_around_a_poke(
        &e,
        &session,
        &["-n", &s, "trace", "tcp", "--duration", "8s"],
        "orb8: tracing TCP on 1 agent",
        (&s, "client"),
    );
    let (client, server) = (format!("{s}/client"), format!("{r}/server"));
    // The client's side of each connection, in order: the kinds, and how the closes ended.
    let client_side = |port: u64| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|l| l["role"] == "connect" && l["remote_port"] == port)
            .map(|l| {
                assert_eq!(
                    (l["local_name"].as_str(), l["remote_name"].as_str()),
                    (Some(client.as_str()), Some(server.as_str())),
                    "both ends named: {l:#}"
                );
                let kind = l["kind"].as_str().unwrap_or_default().to_string();
                let outcome = l["outcome"].as_str().unwrap_or_default().to_string();
                (kind, outcome)
            })
            .collect()
    };
    let served = client_side(8080);
    assert_eq!(
        served.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["CONNECT", "CLOSE"],
        "one connection opened and closed: {lines:#?}"
    );
    assert!(
        served[1].1.starts_with("closed by"),
        "it ended with a FIN, not a reset: {lines:#?}"
    );
    assert_eq!(
        client_side(8081),
        vec![
            ("RESET_RECEIVED".to_string(), String::new()),
            ("CLOSE".to_string(), "refused".to_string())
        ],
        "the connect to the closed port was refused: {lines:#?}"
    );
    assert_eq!(e.session_pods(&session), Vec::<String>::new());
}
